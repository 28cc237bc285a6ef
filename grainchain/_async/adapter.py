"""The base class every provider adapter extends: one instance drives one sandbox.

Its backend (grainchain/_async/backend.py: one per provider and settings, shared by sandboxes) is passed to
the lifecycle classmethods and kept as `self.backend`; the sandbox's typed provider_config is `self.options`.

The facade (AsyncSandbox) checks arguments and capabilities before it calls an adapter, so an adapter method
only runs for features its provider declares. Methods of features an adapter does not implement keep the
defaults below, which raise CapabilityError: never a fake success.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Self

from grainchain._async import directories
from grainchain._async.backend import AsyncBackend
from grainchain._async.commands import CommandRun, HandleRegistry, OomWatch, run_to_completion
from grainchain._async.process import AsyncProcessHandle
from grainchain._checks import no_limit
from grainchain._generated.features import Feature
from grainchain._output import OutputCollector
from grainchain._provider_config import OpenProviderConfig, ProviderConfig
from grainchain._types import IfProcessesRunning, LocalPath, OutputCallback, ResourceBounds
from grainchain.errors import CapabilityError, ProcessesRunningError
from grainchain.models import (
    ExecutionResult,
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
)

if TYPE_CHECKING:
    from grainchain.settings import Settings


# What restore_snapshot, list_snapshots and delete_snapshot need (the spec's `any_of`): either snapshot kind.
ANY_SNAPSHOT = (Feature.SNAPSHOT_FILESYSTEM, Feature.SNAPSHOT_MEMORY)


def _stdin_flag(stdin: bool) -> dict[str, bool]:
    """_launch's `stdin` keyword, given only when True: a `_launch` written before stdin existed still works
    for every command without stdin (its provider does not declare exec.stdin, so none comes with one)."""
    return {"stdin": True} if stdin else {}


def any_of_hint(features: Sequence[Feature]) -> str:
    """The hint of a CapabilityError for an `any_of` requirement (the error names the first feature)."""
    return f"needs any one of {', '.join(f.value for f in features)}"


class AsyncSandboxAdapter:
    """One sandbox of one provider. Subclasses set `provider_name` and implement what they declare."""

    provider_name: ClassVar[str]
    # what the provider's sandboxes share (subclass AsyncBackend to own an SDK client)
    backend_class: ClassVar[type[AsyncBackend]] = AsyncBackend

    def __init__(
        self,
        sandbox_id: str,
        config: SandboxConfig,
        settings: Settings,
        options: ProviderConfig | None = None,
        backend: AsyncBackend | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.config = config
        self.settings = settings
        self.options = options if options is not None else OpenProviderConfig()
        self.backend = backend
        self.status = SandboxStatus.running
        self._handles = HandleRegistry()  # background processes that may still run

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def create(cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig) -> Self:
        raise NotImplementedError(f"{cls.__name__} must implement create()")

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "connect")

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "list_sandboxes")

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> Mapping[Feature, str]:
        """Declared features the backend found at run time lacks (e.g. no CRIU), each with the reason that
        CapabilityError will give. Asked before a sandbox is created or connected to; cache expensive probes."""
        return {}

    @classmethod
    async def resource_bounds(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> ResourceBounds:
        """The least memory_limit and the most cpu_limit this provider can honour here (e.g. the machine's
        cores); asked before create when either is set, and the facade refuses a config outside them with
        ConfigurationError. Default: no bound."""
        return ResourceBounds()

    async def aclose(self) -> None:
        """Stop every process, then remove what the sandbox created unless config.auto_cleanup is False."""
        raise NotImplementedError(f"{type(self).__name__} must implement aclose()")

    async def detach(self) -> None:
        """Let go of the sandbox without stopping it (keep_alive); connect() can pick it up again."""
        self.status = SandboxStatus.running

    # -- operations of the spec (defaults: unsupported) ----------------------------------------------

    async def execute(
        self,
        command: str,
        timeout: float | None = None,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecutionResult:
        """Start the command with `_launch` and see it through (grainchain/_async/commands.py)."""
        if not self._launches():
            raise self._unsupported(Feature.EXEC, "execute")
        output = self._collector(on_stdout, on_stderr)
        timeout = self.command_timeout(timeout)
        oom = await self._oom_watch()
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        data = None if stdin is None else self.content_bytes(stdin)
        run = await self._launch(command, working_dir, environment, deadline, **_stdin_flag(data is not None))
        return await run_to_completion(run, command, output, timeout, started, oom, stdin=data)

    async def start_process(
        self,
        command: str,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: bool = False,
    ) -> AsyncProcessHandle:
        """Start the command with `_launch`; a handle follows it, tracked until it ends or close()."""
        if not self._launches():
            raise self._unsupported(Feature.PROCESS_BACKGROUND, "start_process")
        output = self._collector(on_stdout, on_stderr)
        oom = await self._oom_watch()
        started = time.monotonic()
        run = await self._launch(command, working_dir, environment, None, **_stdin_flag(stdin))
        try:
            pid = await run.pid()
        except BaseException:  # nobody would ever stop it
            try:
                await run.abandon()
            finally:
                await run.close()
            raise
        handle = AsyncProcessHandle(command, run, output, pid=pid, oom=oom, started=started, stdin=stdin)
        self._handles.add(handle)
        return handle

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        raise self._unsupported(Feature.FILES, "upload_file")

    async def download_file(self, path: str) -> bytes:
        raise self._unsupported(Feature.FILES, "download_file")

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        raise self._unsupported(Feature.FILES, "list_files")

    async def get_file_info(self, path: str) -> FileInfo:
        raise self._unsupported(Feature.FILES, "get_file_info")

    async def file_exists(self, path: str) -> bool:
        raise self._unsupported(Feature.FILES, "file_exists")

    async def delete_file(self, path: str) -> None:
        raise self._unsupported(Feature.FILES, "delete_file")

    async def make_directory(self, path: str) -> None:
        raise self._unsupported(Feature.FILES, "make_directory")

    async def upload_directory(self, local_path: LocalPath, sandbox_path: str) -> None:
        """Default for a provider that declares files.directories `emulated`: a tar sent up in parts by
        upload_file and unpacked by `tar -x` in the sandbox (grainchain/_async/directories.py). Per-file
        operations alone could not keep symlinks and modes; a provider with a native tar path overrides it."""
        if not self._launches():
            raise self._unsupported(Feature.FILES_DIRECTORIES, "upload_directory")
        await directories.upload(self, local_path, sandbox_path)

    async def download_directory(self, sandbox_path: str, local_path: LocalPath) -> None:
        """Default (emulated): `tar -c | split` in the sandbox, the parts fetched by download_file."""
        if not self._launches():
            raise self._unsupported(Feature.FILES_DIRECTORIES, "download_directory")
        await directories.download(self, sandbox_path, local_path)

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        feature = Feature.SNAPSHOT_MEMORY if kind is SnapshotKind.memory else Feature.SNAPSHOT_FILESYSTEM
        raise self._unsupported(feature, "create_snapshot")

    async def restore_snapshot(
        self, snapshot_id: str, if_processes_running: IfProcessesRunning = "kill"
    ) -> None:
        """The spec's promise about running processes, for every provider: "refuse" asks the provider which
        run (`_running_processes`) and raises before anything is touched; then `_restore_snapshot`, which
        ends them (a filesystem snapshot) or replaces them (a memory snapshot)."""
        if not self._restores():
            raise self._unsupported_any(ANY_SNAPSHOT, "restore_snapshot")
        if if_processes_running == "refuse":
            running = await self._running_processes()
            if running:
                raise ProcessesRunningError(
                    running, provider=self.provider_name, operation="restore_snapshot"
                )
        await self._restore_snapshot(snapshot_id)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        raise self._unsupported_any(ANY_SNAPSHOT, "list_snapshots")

    # -- snapshots: what a provider implements for restore_snapshot() --------------------------------

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        """Bring the sandbox back to the snapshot, ending what runs (handles: `self._handles.kill_all()`);
        raise SnapshotNotFoundError before touching anything for an unknown id."""
        raise NotImplementedError(f"{type(self).__name__} does not restore snapshots")

    def _restores(self) -> bool:
        return type(self)._restore_snapshot is not AsyncSandboxAdapter._restore_snapshot

    async def _running_processes(self) -> list[str]:
        """Every process that runs in the sandbox now, besides the provider's own (its init, the holder of
        its namespaces), each as "pid N: command line" or the like: those a restore would end, started
        with a handle, `cmd &` or `setsid` alike. A provider that restores snapshots implements it."""
        raise NotImplementedError(f"{type(self).__name__} cannot list the sandbox's processes")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise self._unsupported_any(ANY_SNAPSHOT, "delete_snapshot")

    async def terminate(self) -> None:
        raise self._unsupported(Feature.LIFECYCLE_TERMINATE_WAKE, "terminate")

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        raise self._unsupported(Feature.LIFECYCLE_TERMINATE_WAKE, "wake_up")

    async def port_address(self, port: int) -> str:
        raise self._unsupported(Feature.PORTS, "port_address")

    # -- helpers for subclasses -----------------------------------------------------------------------

    @classmethod
    def _unsupported(cls, feature: Feature, operation: str) -> CapabilityError:
        return CapabilityError(feature.value, cls.provider_name, operation=operation)

    @classmethod
    def _unsupported_any(cls, features: Sequence[Feature], operation: str) -> CapabilityError:
        """As the facade's gate says it: the first feature, the hint naming them all."""
        return CapabilityError(
            features[0].value, cls.provider_name, operation=operation, hint=any_of_hint(features)
        )

    def command_timeout(self, timeout: float | None) -> float | None:
        """The timeout of one command: the call's, else the sandbox's default (None, as math.inf: no limit)."""
        return no_limit(self.config.timeout if timeout is None else timeout)

    # -- commands: what a provider implements for execute() and start_process() ----------------------

    async def _launch(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        *,
        stdin: bool = False,
    ) -> CommandRun:
        """Start `command` (a shell command line) and return how to reach it. `deadline`
        (time.monotonic()) is execute()'s, for a provider that enforces it on its side too; None for a
        background process. `stdin`: give the command a standard input that the run's write_stdin and
        close_stdin feed (else it reads end of file at once). Raise FileNotFoundInSandboxError for a
        working_dir that does not exist."""
        raise NotImplementedError(f"{type(self).__name__} does not run commands")

    def _launches(self) -> bool:
        return type(self)._launch is not AsyncSandboxAdapter._launch

    def _collector(
        self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
    ) -> OutputCollector:
        """Where one command's output goes: the callbacks, under the sandbox's output cap."""
        return OutputCollector(limit=self.config.output_limit, on_stdout=on_stdout, on_stderr=on_stderr)

    async def _oom_baseline(self) -> int | None:
        """Asked before a command starts: a count of the sandbox's OOM kills so far, for
        `_oom_killed_since`; None when OOM kills are not reported (no memory limit)."""
        return None

    async def _oom_killed_since(self, baseline: int) -> bool:
        """Asked after a command failed: whether the kernel OOM-killed a process of the sandbox since
        `_oom_baseline` said `baseline` (MemoryLimitExceededError then)."""
        return False

    async def _oom_watch(self) -> OomWatch | None:
        baseline = await self._oom_baseline()
        return None if baseline is None else OomWatch(self, baseline)

    @staticmethod
    def content_bytes(content: str | bytes) -> bytes:
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)
