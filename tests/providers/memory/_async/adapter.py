"""The memory provider's adapter: each sandbox is a box of the fake SDK (tests/providers/memory/sdk.py), whose
files live in a dict and whose commands are a tiny language (echo, cat, exit N, sleep, ...).

Written once, against the SDK's async twins (`await self._sdk.run.aio(...)`); `python -m codegen` writes the
sync twin (../_sync/adapter.py), where `X.aio` becomes `X`: the blocking client calls the blocking SDK. No
asyncio here, as in every `_async/` source.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Mapping
from typing import Self

from grainchain.adapters import (
    AsyncBackend,
    AsyncSandboxAdapter,
    Feature,
    OutputCallback,
    ProviderConfig,
    Settings,
    start_directory,
)
from grainchain.errors import (
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    OutputLimitExceededError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import (
    ExecutionResult,
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
)
from tests.providers.memory import sdk as memsdk

WORKSPACE = "/workspace"
_STATUS = {
    "running": SandboxStatus.running,
    "stopped": SandboxStatus.closed,
    "terminated": SandboxStatus.terminated,
}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _file_info(stat: memsdk.Stat) -> FileInfo:
    return FileInfo(
        path=stat.path,
        name=posixpath.basename(stat.path) or "/",
        size=stat.size,
        is_directory=stat.is_dir,
        mode=stat.mode,
        modified_time=stat.mtime,
    )


class AsyncMemoryAdapter(AsyncSandboxAdapter):
    provider_name = "memory"

    def __init__(self, box_id: str, config: SandboxConfig, settings: Settings) -> None:
        super().__init__(box_id, config, settings)
        self._sdk = memsdk.Client()
        self._start = start_directory(WORKSPACE, config.working_directory, "memory")

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> Mapping[Feature, str]:
        missing: dict[str, str] = getattr(options, "missing", {})
        return {Feature(name): reason for name, reason in missing.items()}

    @classmethod
    async def create(cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig) -> Self:
        start = start_directory(WORKSPACE, config.working_directory, "memory")
        # the box keeps the config it was made with: connect() gives it back
        box_id = await memsdk.Client().create_box.aio(start, {"config": config.model_dump_json()})
        return cls(box_id, config, backend.settings)

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        sdk = memsdk.Client()
        try:
            box = await sdk.get_box.aio(sandbox_id)
        except memsdk.NotFound:
            raise SandboxNotFoundError(f"no memory sandbox {sandbox_id!r}") from None
        if box.state == "stopped":  # kept by auto_cleanup=False: usable again
            await sdk.set_state.aio(sandbox_id, "running")
        adapter = cls(sandbox_id, SandboxConfig.model_validate_json(box.labels["config"]), backend.settings)
        adapter.status = _STATUS["running" if box.state == "stopped" else box.state]
        return adapter

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        return [
            SandboxInfo(
                sandbox_id=box.box_id,
                provider=cls.provider_name,
                status=_STATUS[box.state],
                created_at=box.created_at,
            )
            for box in await memsdk.Client().list_boxes.aio()
        ]

    async def aclose(self) -> None:
        if self.config.auto_cleanup:
            await self._sdk.delete_box.aio(self.sandbox_id)
        else:
            await self._sdk.set_state.aio(self.sandbox_id, "stopped")
        self.status = SandboxStatus.closed

    async def terminate(self) -> None:
        await self._sdk.set_state.aio(self.sandbox_id, "terminated")
        self.status = SandboxStatus.terminated

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        if snapshot_id is not None:
            await self.restore_snapshot(snapshot_id)
        await self._sdk.set_state.aio(self.sandbox_id, "running")
        self.status = SandboxStatus.running

    # -- commands -------------------------------------------------------------------------------------

    async def execute(
        self,
        command: str,
        timeout: float | None = None,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stdin: str
        | bytes
        | None = None,  # never set: exec.stdin is not among IMPLEMENTED (the facade gates it)
    ) -> ExecutionResult:
        limit = self.command_timeout(timeout)
        environ = {**self.config.environment_vars, **(environment or {})}
        started = time.monotonic()
        try:
            done = await self._sdk.run.aio(
                self.sandbox_id, command, cwd=self._path(working_dir or "."), env=environ, timeout=limit
            )
        except memsdk.NotFound:
            raise FileNotFoundInSandboxError(working_dir or ".") from None
        except memsdk.Timeout as exc:
            raise CommandTimeoutError(
                f"command timed out after {exc.after:g}s",
                command=command,
                timeout=exc.after,
                stdout=_text(exc.stdout),
                stderr=_text(exc.stderr),
                stdout_bytes=exc.stdout,
                stderr_bytes=exc.stderr,
            ) from None
        if len(done.stdout) + len(done.stderr) > self.config.output_limit:
            raise OutputLimitExceededError(
                f"the command wrote more than {self.config.output_limit} bytes",
                limit=self.config.output_limit,
            )
        return ExecutionResult(
            command=command,
            return_code=done.exit_code,
            stdout=_text(done.stdout),
            stderr=_text(done.stderr),
            stdout_bytes=done.stdout,
            stderr_bytes=done.stderr,
            execution_time=time.monotonic() - started,
        )

    # -- files ----------------------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        """A sandbox path: relative to where commands start, or absolute (the SDK keeps it in the box)."""
        return posixpath.join(self._start, path)

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        try:
            await self._sdk.write.aio(
                self.sandbox_id, self._path(path), self.content_bytes(content), append=mode == "a"
            )
        except memsdk.Invalid as exc:
            raise InvalidArgumentError(str(exc), argument="path") from None

    async def download_file(self, path: str) -> bytes:
        try:
            return await self._sdk.read.aio(self.sandbox_id, self._path(path))
        except memsdk.NotFound:
            raise FileNotFoundInSandboxError(path) from None
        except memsdk.Invalid as exc:
            raise InvalidArgumentError(str(exc), argument="path") from None

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        try:
            return [_file_info(s) for s in await self._sdk.listdir.aio(self.sandbox_id, self._path(path))]
        except memsdk.NotFound:
            raise FileNotFoundInSandboxError(path) from None

    async def get_file_info(self, path: str) -> FileInfo:
        try:
            return _file_info(await self._sdk.stat.aio(self.sandbox_id, self._path(path)))
        except memsdk.NotFound:
            raise FileNotFoundInSandboxError(path) from None

    async def file_exists(self, path: str) -> bool:
        try:
            await self._sdk.stat.aio(self.sandbox_id, self._path(path))
        except memsdk.NotFound:
            return False
        return True

    async def delete_file(self, path: str) -> None:
        try:
            await self._sdk.remove.aio(self.sandbox_id, self._path(path))
        except memsdk.NotFound:
            raise FileNotFoundInSandboxError(path) from None

    async def make_directory(self, path: str) -> None:
        try:
            await self._sdk.mkdir.aio(self.sandbox_id, self._path(path))
        except memsdk.Invalid as exc:
            raise InvalidArgumentError(str(exc), argument="path") from None

    # -- snapshots: copies of the box's dict ----------------------------------------------------------

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        if kind is SnapshotKind.memory:
            raise self._unsupported(Feature.SNAPSHOT_MEMORY, "create_snapshot")
        return await self._sdk.snapshot.aio(self.sandbox_id)

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        try:
            await self._sdk.restore.aio(self.sandbox_id, snapshot_id)
        except memsdk.NotFound:
            raise SnapshotNotFoundError(snapshot_id) from None

    async def _running_processes(self) -> list[str]:
        return []  # its commands (`sleep` too) end before execute() returns: nothing runs in between

    async def list_snapshots(self) -> list[SnapshotInfo]:
        return [
            SnapshotInfo(
                snapshot_id=meta.snapshot_id,
                provider=self.provider_name,
                kind=SnapshotKind.filesystem,
                created_at=meta.created_at,
                source_sandbox_id=meta.box_id,
                size_bytes=meta.size,
            )
            for meta in await self._sdk.list_snapshots.aio(self.sandbox_id)
        ]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        try:
            await self._sdk.drop_snapshot.aio(snapshot_id)
        except memsdk.NotFound:
            raise SnapshotNotFoundError(snapshot_id) from None
