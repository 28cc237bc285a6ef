"""The hand-written half of the facade: lifecycle, provider resolution and the capability gate.

The generated half (grainchain/_async/sandbox.py) adds one method per operation of the spec; each checks its
arguments, passes the gate and calls the adapter inside `_errors()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from grainchain._acompat import AFLAVOUR
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._generated.features import CONFIG_REQUIREMENTS, Feature
from grainchain._provider_info import ProviderInfo
from grainchain.errors import CapabilityError, GrainchainError, SandboxNotRunningError
from grainchain.models import SandboxConfig, SandboxInfo, SandboxStatus, SupportLevel
from grainchain.registry import get_provider, providers_supporting
from grainchain.settings import Settings, load_settings, resolve_config

# What a terminated sandbox still does: everything else waits for wake_up().
_WHILE_TERMINATED = frozenset({"terminate", "wake_up", "list_snapshots", "delete_snapshot"})


class AsyncSandboxBase:
    """A sandbox of one provider. Use `async with AsyncSandbox(...) as sandbox:`."""

    def __init__(
        self,
        provider: str | None = None,
        config: SandboxConfig | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self._settings = settings or load_settings()
        self._provider = get_provider(provider or self._settings.default_provider)
        self._config = resolve_config(config, self._settings)
        self._adapter: AsyncSandboxAdapter | None = None
        self._sandbox_id: str | None = None  # kept after close/detach: connect(sandbox_id) needs it then
        self._status = SandboxStatus.creating
        self._capabilities: dict[Feature, SupportLevel] = dict(self._provider.features)
        self._missing: dict[Feature, str] = {}  # feature -> why this backend lacks it

    # -- attributes -----------------------------------------------------------------------------------

    @property
    def provider_name(self) -> str:
        return self._provider.name

    @property
    def provider(self) -> ProviderInfo:
        return self._provider

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @property
    def status(self) -> SandboxStatus:
        # the adapter knows when it was terminated and woken up
        return self._adapter.status if self._adapter is not None else self._status

    @property
    def sandbox_id(self) -> str:
        """The provider's id of the sandbox; still readable after close or detach (to reconnect)."""
        if self._sandbox_id is None:
            return self._running("sandbox_id").sandbox_id  # not started: SandboxNotRunningError
        return self._sandbox_id

    @property
    def capabilities(self) -> Mapping[Feature, SupportLevel]:
        """The support level of every feature: the provider's declaration, narrowed by what its backend
        lacks once the sandbox has started."""
        return dict(self._capabilities)

    def supports(self, feature: Feature | str) -> bool:
        return (
            self._capabilities.get(Feature(feature), SupportLevel.unsupported) is not SupportLevel.unsupported
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the sandbox. Idempotent while it runs."""
        if self._adapter is not None and self._status is SandboxStatus.running:
            return self
        if self._status is SandboxStatus.closed:
            raise SandboxNotRunningError(
                "the sandbox is closed; create a new one", provider=self.provider_name
            )
        adapter_cls = self._adapter_class()
        await self._narrow(adapter_cls)
        for field, feature in CONFIG_REQUIREMENTS.items():
            if getattr(self._config, field) is not None:
                self._check(feature, "create", hint=f"SandboxConfig.{field} is set")
        with self._errors("create"):
            self._adapter = await adapter_cls.create(self._config, self._settings)
        self._sandbox_id = self._adapter.sandbox_id
        self._status = SandboxStatus.running
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._config.keep_alive:
            await self.detach()
        else:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop every process and clean up (per SandboxConfig.auto_cleanup). Safe to call twice."""
        adapter, self._adapter = self._adapter, None
        self._status = SandboxStatus.closed
        if adapter is not None:
            with self._errors("close"):
                await adapter.aclose()

    async def detach(self) -> None:
        """Let go of a running sandbox without stopping it; `connect(sandbox_id)` picks it up again."""
        adapter, self._adapter = self._adapter, None
        self._status = SandboxStatus.closed
        if adapter is not None:
            with self._errors("detach"):
                await adapter.detach()

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        provider: str | None = None,
        config: SandboxConfig | None = None,
        *,
        settings: Settings | None = None,
    ) -> Self:
        """Attach to a sandbox that is still there (kept alive, or kept by auto_cleanup=False). It keeps the
        config it was created with; a `config` given decides only what ending this connection does
        (`auto_cleanup`, `keep_alive`), e.g. `auto_cleanup=True` to delete a kept sandbox on close."""
        sandbox = cls(provider, config, settings=settings)
        adapter_cls = sandbox._adapter_class()
        await sandbox._narrow(adapter_cls)
        sandbox._check(Feature.LIFECYCLE_RECONNECT, "connect")
        with sandbox._errors("connect"):
            adapter = await adapter_cls.connect(sandbox_id, sandbox._config, sandbox._settings)
            if config is not None:
                ending = {"auto_cleanup": config.auto_cleanup, "keep_alive": config.keep_alive}
                adapter.config = adapter.config.model_copy(update=ending)
            sandbox._adapter = adapter
            sandbox._config = adapter.config
        sandbox._sandbox_id = sandbox._adapter.sandbox_id
        sandbox._status = SandboxStatus.running
        return sandbox

    @classmethod
    async def list_sandboxes(
        cls, provider: str | None = None, *, settings: Settings | None = None
    ) -> list[SandboxInfo]:
        """The provider's sandboxes that are still there."""
        probe = cls(provider, settings=settings)
        adapter_cls = probe._adapter_class()
        probe._check(Feature.LIFECYCLE_RECONNECT, "list_sandboxes")
        with probe._errors("list_sandboxes"):
            found: list[SandboxInfo] = await adapter_cls.list_sandboxes(probe._settings)
            return found

    # -- plumbing for the generated methods -----------------------------------------------------------

    def _adapter_class(self) -> type[AsyncSandboxAdapter]:
        adapter_cls: type[AsyncSandboxAdapter] = self._provider.load_adapter(AFLAVOUR)
        return adapter_cls

    async def _narrow(self, adapter_cls: type[AsyncSandboxAdapter]) -> None:
        """Mark what the backend lacks as unsupported (a level goes down, never up), keeping the reason."""
        with self._errors("probe"):
            missing = await adapter_cls.missing_features(self._config, self._settings)
        for name, reason in missing.items():
            feature = Feature(name)
            if feature in self._capabilities:
                self._capabilities[feature] = SupportLevel.unsupported
                self._missing[feature] = reason

    def _check(self, feature: Feature, operation: str, hint: str | None = None) -> None:
        if self._capabilities.get(feature, SupportLevel.unsupported) is SupportLevel.unsupported:
            missing = self._missing.get(feature)
            raise CapabilityError(
                feature.value,
                self.provider_name,
                operation=operation,
                supported_by=providers_supporting(feature),
                hint="; ".join(h for h in (hint, missing and f"not available here: {missing}") if h) or None,
            )

    def _running(self, operation: str) -> AsyncSandboxAdapter:
        if self._adapter is None:
            state = (
                "closed"
                if self._status is SandboxStatus.closed
                else "not started (use `async with` or start())"
            )
            raise SandboxNotRunningError(
                f"the sandbox is {state}", provider=self.provider_name, operation=operation
            )
        return self._adapter

    def _gate(self, operation: str, *features: Feature) -> AsyncSandboxAdapter:
        """Raise CapabilityError for the first unsupported feature, before any provider call."""
        for feature in features:
            self._check(feature, operation)
        adapter = self._running(operation)
        if adapter.status is SandboxStatus.terminated and operation not in _WHILE_TERMINATED:
            raise SandboxNotRunningError(
                "the sandbox is terminated; wake_up() starts it again",
                provider=self.provider_name,
                operation=operation,
            )
        return adapter

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Name the provider and operation on every grainchain error raised inside."""
        try:
            yield
        except GrainchainError as exc:
            exc.provider = exc.provider or self.provider_name
            exc.operation = exc.operation or operation
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} provider={self.provider_name!r} id={self._sandbox_id!r} status={self._status.value}>"
