"""Which providers exist: the built-ins of the spec plus those installed under the `grainchain.providers`
entry-point group (value: a ProviderInfo, or a callable returning one)."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from grainchain._generated.features import Feature
from grainchain._generated.providers import BUILTIN_PROVIDERS
from grainchain._provider_info import ProviderInfo
from grainchain.errors import ProviderError, ProviderNotFoundError

ENTRY_POINT_GROUP = "grainchain.providers"


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


def all_providers() -> dict[str, ProviderInfo]:
    """Every known provider by name; a plugin may not shadow a built-in."""
    merged = dict(_discovered())
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
    """Forget discovered plugins (after installing one at run time)."""
    _discovered.cache_clear()
