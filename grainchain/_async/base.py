"""The hand-written half of the facade: lifecycle, provider resolution and the capability gate.

The generated half (grainchain/_generated/_async/sandbox.py) adds one method per operation of the spec; each checks its
arguments, passes the gate and calls the adapter inside `_errors()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from grainchain._async import backend as backends
from grainchain._async.adapter import AsyncSandboxAdapter, any_of_hint
from grainchain._async.backend import AsyncBackend
from grainchain._checks import shorten
from grainchain._generated.features import CONFIG_REQUIREMENTS, Feature
from grainchain._provider_info import ProviderInfo
from grainchain._types import ResourceBounds
from grainchain.errors import (
    CapabilityError,
    ConfigurationError,
    GrainchainError,
    InvalidArgumentError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
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
        config: SandboxConfig | Mapping[str, Any] | None = None,
        *,
        settings: Settings | None = None,
        backend: AsyncBackend | None = None,
    ) -> None:
        config = as_config(config)
        if backend is not None:
            settings = settings or backend.settings
            provider = provider or backend.provider_name
        self._settings = settings or load_settings()
        self._provider = get_provider(provider or self._settings.default_provider)
        if backend is not None and backend.provider_name != self._provider.name:
            raise ConfigurationError(
                f"the backend given is {backend.provider_name!r}'s, not {self._provider.name!r}'s",
                provider=self._provider.name,
            )
        self._config = resolve_config(config, self._settings)
        # provider_config checked against the provider's model now: a wrong key fails at Sandbox(...)
        self._options = backends.parse_options(self._provider, self._settings, self._config.provider_config)
        self._backend = backend  # given: shared and closed by its owner; else one from the pool per start
        self._pooled: AsyncBackend | None = None
        self._adapter: AsyncSandboxAdapter | None = None
        self._sandbox_id: str | None = None  # kept after close/detach: connect(sandbox_id) needs it then
        self._status = SandboxStatus.not_started  # creating only while start() runs
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

    @property
    def missing_features(self) -> Mapping[Feature, str]:
        """The features the provider declares but this sandbox's backend lacks here (CRIU too old, no
        cgroups ...), each with the reason; `capabilities` shows them unsupported once the sandbox has
        started, `provider.features` as declared."""
        return dict(self._missing)

    @classmethod
    async def probe_missing_features(
        cls,
        provider: str | None = None,
        config: SandboxConfig | Mapping[str, Any] | None = None,
        *,
        settings: Settings | None = None,
    ) -> Mapping[Feature, str]:
        """What `missing_features` would say for a sandbox made with this provider and config, found
        without making one (the provider's backend probes this machine, or its service)."""
        probe = cls(provider, config, settings=settings)
        opened = await probe._open_backend()
        try:
            await probe._narrow(opened)
        finally:
            await probe._release_backend()
        return probe.missing_features

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the sandbox. Idempotent while it runs; after a failure it may be called again."""
        if self._adapter is not None and self._status is SandboxStatus.running:
            return self
        if self._status in (SandboxStatus.closed, SandboxStatus.detached, SandboxStatus.creating):
            raise SandboxNotRunningError(
                f"the sandbox is {self._state()}", provider=self.provider_name, operation="create"
            )
        self._status = SandboxStatus.creating
        try:
            backend = await self._open_backend()
        except BaseException:
            self._status = SandboxStatus.not_started
            raise
        try:
            await self._narrow(backend)
            for field, feature in CONFIG_REQUIREMENTS.items():
                if getattr(self._config, field) is not None:
                    self._check(feature, "create", hint=f"SandboxConfig.{field} is set")
            if self._config.memory_limit is not None or self._config.cpu_limit is not None:
                with self._errors("create"):
                    bounds = await backend.resource_bounds(self._config, self._options)
                self._check_bounds(bounds)
            with self._errors("create"):
                self._adapter = await backend.create(self._config, self._options)
        except BaseException:
            self._status = SandboxStatus.not_started  # nothing was made: start() may be tried again
            await self._release_backend()
            raise
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
        """Stop every process and clean up (per SandboxConfig.auto_cleanup). Safe to call twice. A detached
        sandbox is not this object's any more: closing it changes nothing (connect() to close it)."""
        adapter, self._adapter = self._adapter, None
        if self._status is not SandboxStatus.detached:
            self._status = SandboxStatus.closed
        try:
            if adapter is not None:
                with self._errors("close"):
                    await adapter.aclose()
        finally:
            await self._release_backend()

    async def detach(self) -> None:
        """Let go of a running sandbox without stopping it; `connect(sandbox_id)` picks it up again. Its status
        is then detached (it runs on), not closed; on a sandbox that is not running, nothing happens."""
        adapter, self._adapter = self._adapter, None
        if adapter is None:
            return
        self._status = SandboxStatus.detached
        try:
            if adapter is not None:
                with self._errors("detach"):
                    await adapter.detach()
        finally:
            await self._release_backend()

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        provider: str | None = None,
        config: SandboxConfig | Mapping[str, Any] | None = None,
        *,
        settings: Settings | None = None,
        backend: AsyncBackend | None = None,
    ) -> Self:
        """Attach to a sandbox that is still there (kept alive, or kept by auto_cleanup=False). It keeps the
        config it was created with; a `config` given decides only what ending this connection does
        (`auto_cleanup`, `keep_alive`), e.g. `auto_cleanup=True` to delete a kept sandbox on close, and
        its provider_config's credentials are used to reach the provider."""
        if not isinstance(sandbox_id, str):
            raise InvalidArgumentError(
                f"sandbox_id must be a sandbox's id (a str), got {shorten(sandbox_id)}",
                argument="sandbox_id",
                operation="connect",
            )
        config = as_config(config)
        sandbox = cls(provider, config, settings=settings, backend=backend)
        if not sandbox_id.strip() or "\0" in sandbox_id:  # no provider names a sandbox so
            raise SandboxNotFoundError(
                f"no {sandbox.provider_name} sandbox with id {shorten(sandbox_id)}",
                provider=sandbox.provider_name,
                operation="connect",
            )
        opened = await sandbox._open_backend()
        try:
            await sandbox._narrow(opened)
            sandbox._check(Feature.LIFECYCLE_RECONNECT, "connect")
            with sandbox._errors("connect"):
                adapter = await opened.connect(sandbox_id, sandbox._config, sandbox._options)
                if config is not None:
                    ending = {"auto_cleanup": config.auto_cleanup, "keep_alive": config.keep_alive}
                    adapter.config = adapter.config.model_copy(update=ending)
                sandbox._adapter = adapter
                sandbox._config = adapter.config
        except BaseException:
            await sandbox._release_backend()
            raise
        sandbox._sandbox_id = adapter.sandbox_id
        sandbox._status = SandboxStatus.running
        return sandbox

    @classmethod
    async def list_sandboxes(
        cls,
        provider: str | None = None,
        config: SandboxConfig | Mapping[str, Any] | None = None,
        *,
        settings: Settings | None = None,
        backend: AsyncBackend | None = None,
    ) -> list[SandboxInfo]:
        """The provider's sandboxes that are still there (`config`: its provider_config's credentials)."""
        probe = cls(provider, config, settings=settings, backend=backend)
        probe._check(Feature.LIFECYCLE_RECONNECT, "list_sandboxes")
        opened = await probe._open_backend()
        try:
            with probe._errors("list_sandboxes"):
                return await opened.list_sandboxes()
        finally:
            await probe._release_backend()

    # -- plumbing for the generated methods -----------------------------------------------------------

    async def _open_backend(self) -> AsyncBackend:
        """The backend given, else one of the pool's (released when this sandbox ends)."""
        if self._backend is not None:
            return self._backend
        with self._errors("create"):
            await backends.import_adapter(self._provider)  # the first time: off the event loop
            self._pooled = backends.acquire(self._provider, self._settings, self._options)
        return self._pooled

    async def _release_backend(self) -> None:
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            with self._errors("close"):
                await backends.release(pooled)

    async def _narrow(self, backend: AsyncBackend) -> None:
        """Mark what the backend lacks as unsupported (a level goes down, never up), keeping the reason."""
        with self._errors("probe"):
            missing = await backend.missing_features(self._config, self._options)
        for name, reason in missing.items():
            feature = Feature(name)
            if feature in self._capabilities:
                self._capabilities[feature] = SupportLevel.unsupported
                self._missing[feature] = reason

    def _check_bounds(self, bounds: ResourceBounds) -> None:
        """ConfigurationError for a memory_limit or cpu_limit the provider cannot honour here, before
        anything is made (not a provider's refusal quoting its internals, nor a cap silently ignored)."""
        memory, cpus = self._config.memory_limit, self._config.cpu_limit
        problem = None
        if memory is not None and bounds.min_memory is not None and memory < bounds.min_memory:
            problem = (
                f"SandboxConfig.memory_limit must be at least {bounds.min_memory} bytes "
                f"({bounds.min_memory / 2**20:g} MiB) on {self.provider_name}, got {memory}"
                + (f": {bounds.min_memory_why}" if bounds.min_memory_why else "")
            )
        elif cpus is not None and bounds.max_cpus is not None and cpus > bounds.max_cpus:
            problem = (
                f"SandboxConfig.cpu_limit must be at most {bounds.max_cpus:g} on {self.provider_name} "
                f"here, got {cpus:g}" + (f": {bounds.max_cpus_why}" if bounds.max_cpus_why else "")
            )
        if problem:
            raise ConfigurationError(problem, provider=self.provider_name, operation="create")

    def _check(self, feature: Feature, operation: str, hint: str | None = None) -> None:
        self._check_any((feature,), operation, hint)

    def _check_any(self, features: tuple[Feature, ...], operation: str, hint: str | None = None) -> None:
        """Pass when the sandbox supports at least one of `features` (the spec's `any_of`); else
        CapabilityError naming the first, its hint listing them all and why this backend lacks each."""
        unsupported = SupportLevel.unsupported
        if any(self._capabilities.get(f, unsupported) is not unsupported for f in features):
            return
        notes = [hint, any_of_hint(features) if len(features) > 1 else None]
        lacking = [(f, self._missing[f]) for f in features if f in self._missing]
        if lacking:
            why = (f"{f.value}: {reason}" if len(features) > 1 else reason for f, reason in lacking)
            notes.append(f"not available here: {'; '.join(why)}")
        raise CapabilityError(
            features[0].value,
            self.provider_name,
            operation=operation,
            supported_by=dict.fromkeys(p for f in features for p in providers_supporting(f)),
            hint="; ".join(n for n in notes if n) or None,
        )

    def _state(self) -> str:
        """What the sandbox is, for SandboxNotRunningError."""
        if self._status is SandboxStatus.closed:
            return "closed; create a new one"
        if self._status is SandboxStatus.detached:
            return (
                f"detached: it runs on, and `connect({self._sandbox_id!r})` attaches to it again "
                "(this object does no more work)"
            )
        if self._status is SandboxStatus.creating:
            return "being created: start() has not finished"
        return "not started (use `async with` or start())"

    def _running(self, operation: str) -> AsyncSandboxAdapter:
        if self._adapter is None:
            raise SandboxNotRunningError(
                f"the sandbox is {self._state()}", provider=self.provider_name, operation=operation
            )
        return self._adapter

    def _gate(self, operation: str, *features: Feature | tuple[Feature, ...]) -> AsyncSandboxAdapter:
        """Raise CapabilityError for the first requirement not met, before any provider call: a Feature, or
        a tuple of them met by any one (the spec's `any_of`)."""
        for feature in features:
            self._check_any(feature if isinstance(feature, tuple) else (feature,), operation)
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
        except UnicodeEncodeError as exc:
            # a name that is not UTF-8 (os.fsdecode's surrogate escapes) for a provider whose backend takes
            # only UTF-8 (the checks let such paths through: local takes them); anything else is not ours
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
            if not any("\ud800" <= char <= "\udfff" for char in bad):
                raise
            raise InvalidArgumentError(
                f"the {self.provider_name} provider takes only UTF-8 text, and an argument holds "
                f"{bad!r} (a file name that is not UTF-8?)",
                argument="path",
                provider=self.provider_name,
                operation=operation,
            ) from exc

    def __repr__(self) -> str:
        return f"<{type(self).__name__} provider={self.provider_name!r} id={self._sandbox_id!r} status={self.status.value}>"


def as_config(config: object) -> SandboxConfig | None:
    """A SandboxConfig, None, or a mapping of its fields (`Sandbox(config={"timeout": 5})`), checked as
    SandboxConfig checks them; anything else is a ConfigurationError saying what is accepted."""
    if config is None or isinstance(config, SandboxConfig):
        return config
    if isinstance(config, Mapping):
        return SandboxConfig.model_validate(dict(config))
    raise ConfigurationError(
        f"config must be a SandboxConfig, a mapping of its fields or None, got {shorten(config)}"
    )
