"""Which providers exist: the built-ins of the spec, those installed under the `grainchain.providers`
entry-point group (value: a ProviderInfo, or a callable returning one), and those added at run time with
`register()` (tests, applications that bring their own adapter).

A name belongs to one provider: a plugin or a registered provider never replaces a built-in, and
`register()` refuses a name that is taken unless told to replace it (`replace=True`, which still cannot
replace a built-in: `Sandbox("local")` always means grainchain's own).
"""

from __future__ import annotations

import functools
import threading
from importlib.metadata import entry_points

from grainchain._generated.features import Feature
from grainchain._generated.providers import BUILTIN_PROVIDERS
from grainchain._provider_info import ProviderInfo
from grainchain.errors import ProviderError, ProviderNotFoundError

ENTRY_POINT_GROUP = "grainchain.providers"

_registered: dict[str, ProviderInfo] = {}  # by register(), in this process only
_lock = threading.Lock()


@functools.cache
def _discovered() -> dict[str, ProviderInfo]:
    found: dict[str, ProviderInfo] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            info = ep.load()
            if callable(info) and not isinstance(info, ProviderInfo):
                info = info()
        except Exception as exc:  # a broken plugin must name itself, not break grainchain with a bare trace
            raise ProviderError(
                f"provider plugin {ep.name!r} ({ep.value}) failed to load: {exc}", provider=ep.name
            ) from exc
        if not isinstance(info, ProviderInfo):
            raise ProviderError(
                f"provider plugin {ep.name!r} ({ep.value}) must be a grainchain.ProviderInfo, got {type(info).__name__}",
                provider=ep.name,
            )
        if info.name != ep.name:
            raise ProviderError(
                f"provider plugin {ep.name!r} declares the name {info.name!r}; they must match",
                provider=ep.name,
            )
        found[info.name] = info
    return found


def register(info: ProviderInfo, *, replace: bool = False) -> None:
    """Make a provider known to this process under `info.name`, as an installed plugin would be: `Sandbox(name)`,
    `get_provider`, `all_providers`, `providers_supporting` and `grainchain providers` see it.

    A name that is taken (a plugin's, or one registered before) raises ProviderError unless `replace` is
    true; the name of a built-in provider raises ProviderError always. Sandboxes made before a replace keep the
    declaration they were made with. `unregister(name)` takes it away again.
    """
    if not isinstance(info, ProviderInfo):
        raise TypeError(f"register() takes a grainchain.ProviderInfo, got {type(info).__name__}")
    if info.name in BUILTIN_PROVIDERS:
        raise ProviderError(
            f"cannot register a provider named {info.name!r}: that is a built-in provider, which cannot be "
            "replaced; choose another name",
            provider=info.name,
        )
    plugins = _discovered()  # outside the lock: loading plugins imports their code
    with _lock:
        if not replace and (info.name in _registered or info.name in plugins):
            where = (
                "registered already"
                if info.name in _registered
                else f"an installed plugin's ({ENTRY_POINT_GROUP})"
            )
            raise ProviderError(
                f"cannot register a provider named {info.name!r}: the name is {where}; "
                "pass replace=True to replace it",
                provider=info.name,
            )
        _registered[info.name] = info


def unregister(name: str) -> ProviderInfo:
    """Take away a provider added with `register()` and return its declaration (a plugin it replaced is
    visible again). Built-ins and plugins cannot be unregistered: ProviderError."""
    with _lock:
        if name in _registered:
            return _registered.pop(name)
    kind = "a built-in provider" if name in BUILTIN_PROVIDERS else "not added with register()"
    raise ProviderError(f"cannot unregister {name!r}: it is {kind}", provider=name)


def all_providers() -> dict[str, ProviderInfo]:
    """Every known provider by name: registered ones win over plugins, built-ins over both."""
    merged = dict(_discovered())
    merged.update(_registered)
    merged.update(BUILTIN_PROVIDERS)
    return dict(sorted(merged.items()))


def get_provider(name: str) -> ProviderInfo:
    providers = all_providers()
    try:
        return providers[name]
    except KeyError:
        raise ProviderNotFoundError(name, providers) from None


def providers_supporting(feature: Feature) -> list[str]:
    """Providers with a working adapter that support the feature (planned ones are not offered)."""
    return [
        name
        for name, info in all_providers().items()
        if info.status == "available" and info.supports(feature)
    ]


def refresh() -> None:
    """Forget discovered plugins (after installing one at run time); registered providers stay."""
    _discovered.cache_clear()
