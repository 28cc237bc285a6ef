"""The backend tier: one object per provider and settings, in the role of an httpx transport.

A backend owns what the sandboxes of one provider share: the SDK or engine client, the credentials, the
caches of what was probed. It creates, connects to and lists sandboxes and says which declared features
this machine or account lacks; the adapter it returns drives one sandbox. A provider with something to own
subclasses AsyncBackend (docker: its Engine API client) and names it in its adapter's `backend_class`.

Sandboxes made without `backend=` share one from a pool, per provider, settings, connection options and
event loop; it is closed when the last of them ends. Pass `backend=await AsyncBackend.open(...)` to share
one explicitly (then close it yourself, or use `async with`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from grainchain._acompat import AFLAVOUR, arun_blocking, ascope
from grainchain._generated.features import Feature
from grainchain._provider_config import ProviderConfig, parse_provider_config
from grainchain._types import ResourceBounds
from grainchain.models import SandboxConfig, SandboxInfo
from grainchain.registry import get_provider
from grainchain.settings import Settings, load_settings

if TYPE_CHECKING:
    from grainchain._async.adapter import AsyncSandboxAdapter
    from grainchain._provider_info import ProviderInfo


class AsyncBackend:
    """One provider under one set of settings and connection options."""

    def __init__(
        self,
        provider: ProviderInfo,
        adapter_class: type[AsyncSandboxAdapter],
        settings: Settings,
        options: ProviderConfig,
    ) -> None:
        self.provider = provider
        self.adapter_class = adapter_class
        self.settings = settings
        self.options = options  # the connection-level ones count (credentials); sandboxes bring their own
        self.closed = False

    @classmethod
    async def open(
        cls,
        provider: str | None = None,
        provider_config: Mapping[str, Any] | None = None,
        *,
        settings: Settings | None = None,
    ) -> AsyncBackend:
        """A backend of `provider` for explicit sharing: `Sandbox(..., backend=backend)`."""
        settings = settings or load_settings()
        info = get_provider(provider or settings.default_provider)
        options = parse_options(info, settings, provider_config or {})
        await import_adapter(info)
        return open_backend(info, settings, options)

    @property
    def provider_name(self) -> str:
        return self.provider.name

    # -- what the facade asks ---------------------------------------------------------------------------

    async def create(self, config: SandboxConfig, options: ProviderConfig) -> AsyncSandboxAdapter:
        return self._own(await self.adapter_class.create(self, config, options), options)

    async def connect(
        self, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> AsyncSandboxAdapter:
        return self._own(await self.adapter_class.connect(self, sandbox_id, config, options), options)

    def _own(self, adapter: AsyncSandboxAdapter, options: ProviderConfig) -> AsyncSandboxAdapter:
        adapter.backend, adapter.options = self, options
        return adapter

    async def list_sandboxes(self) -> list[SandboxInfo]:
        return await self.adapter_class.list_sandboxes(self)

    async def missing_features(self, config: SandboxConfig, options: ProviderConfig) -> Mapping[Feature, str]:
        return await self.adapter_class.missing_features(self, config, options)

    async def resource_bounds(self, config: SandboxConfig, options: ProviderConfig) -> ResourceBounds:
        return await self.adapter_class.resource_bounds(self, config, options)

    async def aclose(self) -> None:
        """Release what the backend owns (clients, connections). Subclasses extend it."""
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:  # never the options: they may hold credentials (SecretStr hides them anyway)
        return f"<{type(self).__name__} provider={self.provider_name!r} closed={self.closed}>"


def parse_options(info: ProviderInfo, settings: Settings, raw: Mapping[str, Any]) -> ProviderConfig:
    """SandboxConfig.provider_config checked against the provider's model (ConfigurationError otherwise)."""
    return parse_provider_config(
        info.load_config_model(), info.name, raw, file_defaults=settings.providers.get(info.name)
    )


# the adapters imported so far (provider name, adapter path): whose load_adapter() costs nothing any more
_imported: set[tuple[str, str | None]] = set()


async def import_adapter(info: ProviderInfo) -> None:
    """The first time, import the provider's adapter module off the event loop (an import reads and runs
    many files and may import an SDK: a long stall of every other task); afterwards nothing. Sandbox(...)
    itself stays synchronous (it checks provider_config): the import waits for start()."""
    key = (info.name, info.sync_adapter if AFLAVOUR == "sync" else info.async_adapter)
    if key not in _imported:
        await arun_blocking(info.load_adapter, AFLAVOUR)
        _imported.add(key)


def open_backend(info: ProviderInfo, settings: Settings, options: ProviderConfig) -> AsyncBackend:
    adapter_class: type[AsyncSandboxAdapter] = info.load_adapter(AFLAVOUR)
    backend: AsyncBackend = adapter_class.backend_class(info, adapter_class, settings, options)
    return backend


# -- the pool of shared backends ----------------------------------------------------------------------------

# key -> [backend, users]; a key is the provider, the settings, the connection options and the event loop
_pool: dict[tuple[Any, ...], list[Any]] = {}


def _key(info: ProviderInfo, settings: Settings, options: ProviderConfig) -> tuple[Any, ...]:
    credentials = tuple(options.secret(name) for name in sorted(type(options).credential_env()))
    return (info.name, id(info), settings.model_dump_json(), credentials, ascope())


def acquire(info: ProviderInfo, settings: Settings, options: ProviderConfig) -> AsyncBackend:
    """The pool's backend for these, opened on first use; every acquire needs one release."""
    key = _key(info, settings, options)
    entry = _pool.get(key)
    if entry is None or entry[0].closed:
        entry = _pool[key] = [open_backend(info, settings, options), 0]
    entry[1] += 1
    backend: AsyncBackend = entry[0]
    return backend


async def release(backend: AsyncBackend) -> None:
    """One user less; the last one closes the backend."""
    for key, entry in list(_pool.items()):
        if entry[0] is backend:
            entry[1] -= 1
            if entry[1] <= 0:
                del _pool[key]
                await backend.aclose()
            return
