"""The base class every provider adapter extends: one instance drives one sandbox.

The facade (AsyncSandbox) checks arguments and capabilities before it calls an adapter, so an adapter method
only runs for features its provider declares. Methods of features an adapter does not implement keep the
defaults below, which raise CapabilityError: never a fake success.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Self

from grainchain._generated.features import Feature
from grainchain._types import OutputCallback
from grainchain.errors import CapabilityError
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
    from grainchain._async.process import AsyncProcessHandle
    from grainchain.settings import Settings


class AsyncSandboxAdapter:
    """One sandbox of one provider. Subclasses set `provider_name` and implement what they declare."""

    provider_name: ClassVar[str]

    def __init__(self, sandbox_id: str, config: SandboxConfig, settings: Settings) -> None:
        self.sandbox_id = sandbox_id
        self.config = config
        self.settings = settings
        self.status = SandboxStatus.running

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def create(cls, config: SandboxConfig, settings: Settings) -> Self:
        raise NotImplementedError(f"{cls.__name__} must implement create()")

    @classmethod
    async def connect(cls, sandbox_id: str, config: SandboxConfig, settings: Settings) -> Self:
        raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "connect")

    @classmethod
    async def list_sandboxes(cls, settings: Settings) -> list[SandboxInfo]:
        raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "list_sandboxes")

    @classmethod
    async def missing_features(cls, config: SandboxConfig, settings: Settings) -> Mapping[Feature, str]:
        """Declared features the backend found at run time lacks (e.g. no CRIU), each with the reason that
        CapabilityError will give. Asked before a sandbox is created or connected to; cache expensive probes."""
        return {}

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
    ) -> ExecutionResult:
        raise self._unsupported(Feature.EXEC, "execute")

    async def start_process(
        self,
        command: str,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> AsyncProcessHandle:
        raise self._unsupported(Feature.PROCESS_BACKGROUND, "start_process")

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

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        feature = Feature.SNAPSHOT_MEMORY if kind is SnapshotKind.memory else Feature.SNAPSHOT_FILESYSTEM
        raise self._unsupported(feature, "create_snapshot")

    async def restore_snapshot(self, snapshot_id: str) -> None:
        raise self._unsupported(Feature.SNAPSHOT_FILESYSTEM, "restore_snapshot")

    async def list_snapshots(self) -> list[SnapshotInfo]:
        raise self._unsupported(Feature.SNAPSHOT_FILESYSTEM, "list_snapshots")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        raise self._unsupported(Feature.SNAPSHOT_FILESYSTEM, "delete_snapshot")

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

    def command_timeout(self, timeout: float | None) -> float | None:
        """The timeout of one command: the call's, else the sandbox's default."""
        return self.config.timeout if timeout is None else timeout

    @staticmethod
    def content_bytes(content: str | bytes) -> bytes:
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)
