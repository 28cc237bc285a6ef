"""The local provider: commands run as host processes in a private workspace directory.

Not an isolation boundary (a command can still read the host's files); what it guarantees: a scrubbed
environment, whole-tree kills on timeout and close, file operations confined to the workspace, and
filesystem snapshots that outlive the process. Blocking disk work lives in grainchain/_localfs.py.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Self

from grainchain import _localfs as fs
from grainchain._acompat import arun_blocking
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._async.hostexec import AsyncHostProcessHandle, run_to_completion
from grainchain._hostproc import (
    EXEC_MARKER,
    SANDBOX_MARKER,
    HostProcess,
    kill_marked,
    scrubbed_environment,
    spawn,
)
from grainchain._output import OutputCollector
from grainchain._paths import resolve_inside
from grainchain._types import OutputCallback
from grainchain.errors import ConfigurationError, FileNotFoundInSandboxError
from grainchain.models import (
    ExecutionResult,
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
)
from grainchain.settings import Settings

KNOWN_PROVIDER_CONFIG: frozenset[str] = frozenset()


class AsyncLocalAdapter(AsyncSandboxAdapter):
    provider_name = "local"

    def __init__(self, box: fs.SandboxDir, config: SandboxConfig, settings: Settings) -> None:
        super().__init__(box.sandbox_id, config, settings)
        self._box = box
        self._state_dir = settings.state_dir
        self._handles: list[AsyncHostProcessHandle] = []
        self._cwd = self._working_directory(config.working_directory)

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def create(cls, config: SandboxConfig, settings: Settings) -> Self:
        unknown = set(config.provider_config) - KNOWN_PROVIDER_CONFIG
        if unknown:
            raise ConfigurationError(
                f"unknown provider_config keys for local: {', '.join(sorted(unknown))} "
                "(the local provider takes none yet)",
                provider=cls.provider_name,
            )
        box = await arun_blocking(fs.SandboxDir.create, settings.state_dir, config)
        try:
            adapter = cls(box, config, settings)
            await arun_blocking(adapter._cwd.mkdir, parents=True, exist_ok=True)
        except BaseException:
            await arun_blocking(box.remove)
            raise
        return adapter

    @classmethod
    async def connect(cls, sandbox_id: str, config: SandboxConfig, settings: Settings) -> Self:
        box = await arun_blocking(fs.SandboxDir.open, settings.state_dir, sandbox_id)
        await arun_blocking(box.recover)  # a restore its last owner did not finish (crash)
        stored = await arun_blocking(box.config)
        adapter = cls(box, stored, settings)
        await arun_blocking(box.save, SandboxStatus.running, stored)
        return adapter

    @classmethod
    async def list_sandboxes(cls, settings: Settings) -> list[SandboxInfo]:
        return await arun_blocking(fs.list_sandboxes, settings.state_dir)

    async def aclose(self) -> None:
        await self._kill_all()
        if self.config.auto_cleanup:
            await arun_blocking(self._box.remove)
        else:
            await arun_blocking(self._box.save, SandboxStatus.closed, self.config)
        self.status = SandboxStatus.closed

    async def _kill_all(self) -> None:
        for handle in self._handles:
            await handle.kill()
        self._handles.clear()
        # processes a command left behind (`sleep 100 &`, daemons) carry the sandbox marker
        await arun_blocking(kill_marked, f"{SANDBOX_MARKER}={self.sandbox_id}")

    # -- commands -------------------------------------------------------------------------------------

    def _working_directory(self, working_dir: str | None) -> Path:
        root = self._box.workspace
        return root if working_dir is None else resolve_inside(root, root, working_dir)

    def _spawn(
        self, command: str, working_dir: str | None, environment: dict[str, str] | None
    ) -> HostProcess:
        cwd = (
            self._cwd if working_dir is None else resolve_inside(self._box.workspace, self._cwd, working_dir)
        )
        if not cwd.is_dir():  # also a working directory deleted since the sandbox started
            raise FileNotFoundInSandboxError(str(cwd), provider=self.provider_name)
        env = scrubbed_environment(
            {"HOME": str(self._box.workspace), "TMPDIR": str(self._box.tmp)},
            self.config.environment_vars,
            environment or {},
            {SANDBOX_MARKER: self.sandbox_id},
        )
        return spawn(command, cwd=cwd, env=env, marker=(EXEC_MARKER, uuid.uuid4().hex))

    def _collector(
        self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
    ) -> OutputCollector:
        return OutputCollector(limit=self.config.output_limit, on_stdout=on_stdout, on_stderr=on_stderr)

    async def execute(
        self,
        command: str,
        timeout: float | None = None,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecutionResult:
        child = self._spawn(command, working_dir, environment)
        output = self._collector(on_stdout, on_stderr)
        return await run_to_completion(child, command, output, self.command_timeout(timeout))

    async def start_process(
        self,
        command: str,
        working_dir: str | None = None,
        environment: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> AsyncHostProcessHandle:
        child = self._spawn(command, working_dir, environment)
        handle = AsyncHostProcessHandle(child, command, self._collector(on_stdout, on_stderr))
        self._handles = [h for h in self._handles if h.is_running] + [handle]
        return handle

    # -- files ----------------------------------------------------------------------------------------

    def _path(self, path: str, *, follow_symlinks: bool = True) -> Path:
        return resolve_inside(self._box.workspace, self._cwd, path, follow_symlinks=follow_symlinks)

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        target = self._path(path)
        await arun_blocking(fs.write_file, target, self.content_bytes(content), append=mode.startswith("a"))

    async def download_file(self, path: str) -> bytes:
        return await arun_blocking(fs.read_file, self._path(path))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        return await arun_blocking(fs.list_directory, self._path(path))

    # These act on a symlink itself, not on what it points to, so a link leading out of the workspace can
    # still be inspected and removed (its target is never touched).

    async def get_file_info(self, path: str) -> FileInfo:
        return await arun_blocking(fs.file_info, self._path(path, follow_symlinks=False))

    async def file_exists(self, path: str) -> bool:
        target = self._path(path, follow_symlinks=False)
        return await arun_blocking(os.path.lexists, target)

    async def delete_file(self, path: str) -> None:
        await arun_blocking(fs.delete, self._path(path, follow_symlinks=False), self._box.workspace)

    async def make_directory(self, path: str) -> None:
        await arun_blocking(fs.make_directory, self._path(path))

    # -- snapshots ------------------------------------------------------------------------------------

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        info = await arun_blocking(fs.create_snapshot, self._state_dir, self._box)
        return info.snapshot_id

    async def restore_snapshot(self, snapshot_id: str) -> None:
        # An unknown id must fail before anything is touched (processes included).
        await arun_blocking(fs.snapshot_tree, self._state_dir, snapshot_id)
        # A filesystem snapshot holds no processes: stop them so the tree is exactly the snapshot's.
        await self._kill_all()
        await arun_blocking(fs.restore_snapshot, self._state_dir, self._box, snapshot_id)
        await arun_blocking(self._cwd.mkdir, parents=True, exist_ok=True)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        return await arun_blocking(fs.list_snapshots, self._state_dir)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await arun_blocking(fs.delete_snapshot, self._state_dir, snapshot_id)
