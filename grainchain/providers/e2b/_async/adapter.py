"""The e2b provider's adapter: one grainchain sandbox is one E2B sandbox, driven through the official SDK
(its AsyncSandbox here; `python -m codegen` writes the blocking twin in ../_sync/ over e2b.Sandbox).

Identity: a grainchain sandbox id ("e2b-…") lives in the E2B sandbox's metadata. Restoring a snapshot makes
a new E2B sandbox (E2B starts snapshots as new sandboxes) that carries the same metadata, so the grainchain
id stays and connect()/list_sandboxes() find the sandbox by it. Snapshots carry their owner, kind and time
in their name (E2B keeps nothing else about a snapshot).

Lifetime: every sandbox is created with provider_config `lifetime` (E2B kills it by itself afterwards), so a
forgotten sandbox ends; SandboxConfig.timeout is only each command's default timeout.

Commands run as `bash -l -c <command>` (the SDK's way) with a marker in their environment: a timeout or a
kill ends every process the command started, not only its first one.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Self

import e2b
import stamina

from grainchain._async import refusals
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._async.backend import AsyncBackend, parse_options
from grainchain._checks import start_directory
from grainchain._commands import (
    EXEC_MARKER,
    KILL_MARKED_SCRIPT,
    LIST_MARKED_SCRIPT,
    SANDBOX_MARKER,
    listed_processes,
)
from grainchain._generated.features import Feature
from grainchain._output import OutputCollector, Stream
from grainchain._provider_config import ProviderConfig
from grainchain.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeoutError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    ProviderError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
    StdinClosedError,
)
from grainchain.models import (
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
)
from grainchain.providers.e2b import _sdk
from grainchain.providers.e2b._sdk import PROVIDER, ACall, OutputOverflow, T, translated
from grainchain.providers.e2b.config import E2bConfig
from grainchain.settings import Settings

KILLED = 128 + 9  # the exit code of a command grainchain killed (timeout, kill())
# how long after its deadline a command's end still counts as its own (envd kills it at the deadline too)
DEADLINE_SLACK = 0.25


def _options(options: ProviderConfig) -> E2bConfig:
    assert isinstance(options, E2bConfig), type(options)
    return options


def _api(options: E2bConfig) -> dict[str, Any]:
    """The connection keywords every SDK call takes (credentials and endpoints); never logged."""
    api: dict[str, Any] = {
        "api_key": options.secret("api_key"),
        "request_timeout": options.request_timeout,
        "retries": options.retries,
    }
    for name in ("domain", "api_url", "sandbox_url"):
        value = getattr(options, name)
        if value is not None:
            api[name] = value
    return api


def _network(options: E2bConfig) -> dict[str, Any]:
    """provider_config `network` as the SDK's create takes it."""
    if options.network == "none":
        return {"allow_internet_access": False}
    if isinstance(options.network, list):  # only these: allow_out wins over deny_out
        return {"network": {"allow_out": list(options.network), "deny_out": [e2b.ALL_TRAFFIC]}}
    return {}


async def _retried(
    options: E2bConfig,
    what: str,
    call: ACall[T],
    *,
    path: str | None = None,
    sandbox: str | None = None,
    only: tuple[type[GrainchainError], ...] | None = None,
    wait_initial: float = 0.1,
) -> T:
    """Make an idempotent SDK call; a transient failure (a lost connection or answer, a 5xx, a 429: what
    grainchain marks retryable; of those, only the `only` types when given) is tried again up to
    provider_config `retries` times with stamina's backoff. (The SDK itself retries only the control
    plane's 429/502-504 answers and connections never made.) The first try runs outside stamina: its
    set-up costs as much as a small file's download."""

    def transient(exc: BaseException) -> bool:
        if only is not None:
            return isinstance(exc, only)
        return isinstance(exc, GrainchainError) and exc.retryable is True

    try:
        with translated(what, path=path, sandbox=sandbox):
            return await call()
    except GrainchainError as exc:
        if not transient(exc) or not options.retries:
            raise
    async for attempt in stamina.retry_context(
        on=transient, attempts=options.retries, timeout=None, wait_initial=wait_initial
    ):
        with attempt, translated(what, path=path, sandbox=sandbox):
            return await call()
    raise AssertionError("unreachable: stamina re-raises the last error")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _snapshot_name(sandbox_id: str, kind: SnapshotKind) -> str:
    # lowercase letters, digits and hyphens: what E2B accepts in a name
    return f"{sandbox_id}-{kind.value[0]}-{_now_ms()}"


def _parse_snapshot_name(names: list[str], snapshot_id: str) -> tuple[str, SnapshotKind, datetime] | None:
    """(source sandbox id, kind, created_at) when one of the snapshot's names is one grainchain gave."""
    for full in [*names, snapshot_id]:
        name = full.rsplit("/", 1)[-1].split(":", 1)[0]
        parts = name.rsplit("-", 2)
        if len(parts) == 3 and parts[0].startswith("e2b-") and parts[1] in ("f", "m") and parts[2].isdigit():
            kind = SnapshotKind.filesystem if parts[1] == "f" else SnapshotKind.memory
            return parts[0], kind, datetime.fromtimestamp(int(parts[2]) / 1000, UTC)
    return None


def _file_info(entry: Any) -> FileInfo:
    is_symlink = entry.symlink_target is not None
    modified = entry.modified_time
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return FileInfo(
        path=entry.path,
        name=entry.name or posixpath.basename(entry.path) or "/",
        size=0 if entry.type == e2b.FileType.DIR and not is_symlink else int(entry.size),
        is_directory=entry.type == e2b.FileType.DIR and not is_symlink,
        is_symlink=is_symlink,
        mode=int(entry.mode) & 0o7777,
        modified_time=modified,
    )


class _Sink:
    """Where the SDK's output callbacks write. The async SDK starts calling them as soon as a command
    starts, before the plumbing hands over its collector: what comes first waits here."""

    def __init__(self) -> None:
        self._pending: list[tuple[Stream, bytes]] = []
        self._output: OutputCollector | None = None
        # True once the SDK hands over the raw bytes (_sdk.tee_raw_output); else its decoded text comes
        # to stdout()/stderr(), fed re-encoded, and the collector's bytes say None
        self.raw = False

    def stdout(self, text: str) -> None:
        self._feed(Stream.STDOUT, text.encode())

    def stderr(self, text: str) -> None:
        self._feed(Stream.STDERR, text.encode())

    def stdout_bytes(self, data: bytes) -> None:
        self._feed(Stream.STDOUT, data)

    def stderr_bytes(self, data: bytes) -> None:
        self._feed(Stream.STDERR, data)

    def _feed(self, stream: Stream, data: bytes) -> None:
        if self._output is None:
            self._pending.append((stream, data))
            return
        if self._output.overflowed:
            raise OutputOverflow
        self._output.feed(stream, data)
        if self._output.overflowed:
            raise OutputOverflow  # ends the SDK's wait; the adapter kills the command

    def attach(self, output: OutputCollector) -> bool:
        """Hand over the collector; False when what came before already overflowed it."""
        self._output = output
        output.raw = self.raw
        for stream, data in self._pending:
            output.feed(stream, data)
        self._pending.clear()
        return not output.overflowed


class _Command:
    """A command started through the SDK (grainchain/_async/commands.py's CommandRun)."""

    def __init__(
        self, adapter: AsyncE2bAdapter, handle: e2b.AsyncCommandHandle[None], sink: _Sink, marker: str
    ) -> None:
        self.id = str(handle.pid)
        self._adapter = adapter
        self._handle = handle
        self._sink = sink
        self._marker = marker
        self._code: int | None = None

    async def pid(self) -> int | None:
        return int(self._handle.pid)

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        if not self._sink.attach(output):
            return False
        try:
            await _sdk.await_command(self._handle, self._sink.stdout, self._sink.stderr)
            self._code = 0
        except OutputOverflow:
            return False
        except e2b.CommandExitException as exc:
            code = _sdk.exit_code(exc.exit_code, exc.error)
            if code != exc.exit_code and _past(deadline):  # envd killed it at the deadline
                return False
            self._code = code
        except e2b.TimeoutException as exc:
            if _past(deadline):  # the SDK's deadline of the command's stream
                return False
            _sdk.fail(exc, "wait for a command", sandbox=self._adapter.sandbox_id)
        except _sdk.SDK_ERRORS as exc:
            _sdk.fail(exc, "wait for a command", sandbox=self._adapter.sandbox_id)
        return True

    async def stop(self, output: OutputCollector) -> None:
        await self.signal()
        self._code = KILLED if self._code is None else self._code

    async def signal(self) -> None:
        await self._adapter._kill_marked(self._marker)

    async def exit_code(self) -> int:
        return KILLED if self._code is None else self._code

    async def abandon(self) -> int | None:
        with contextlib.suppress(GrainchainError):
            await self.signal()
        return self._code

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # the stream may be gone with the sandbox
            await _sdk.adisconnect(self._handle)

    async def write_stdin(self, data: bytes) -> None:
        try:
            await self._adapter._sbx.commands.send_stdin(self._handle.pid, data)
        except (e2b.NotFoundException, e2b.InvalidArgumentException) as exc:
            # envd: no such process (it ended), or its stdin is closed / was never opened
            raise StdinClosedError(
                f"the command no longer reads its standard input ({exc})", provider=PROVIDER
            ) from None
        except e2b.SandboxException as exc:
            if "stdin" in str(exc) and not isinstance(exc, e2b.TimeoutException):
                raise StdinClosedError(
                    f"the command no longer reads its standard input ({exc})", provider=PROVIDER
                ) from None
            _sdk.fail(exc, "write to a command's stdin", sandbox=self._adapter.sandbox_id)
        except _sdk.SDK_ERRORS as exc:
            _sdk.fail(exc, "write to a command's stdin", sandbox=self._adapter.sandbox_id)

    async def close_stdin(self) -> None:
        try:
            await self._adapter._sbx.commands.close_stdin(self._handle.pid)
        except e2b.NotFoundException:
            pass  # it ended: nothing reads the stdin any more
        except _sdk.SDK_ERRORS as exc:
            _sdk.fail(exc, "close a command's stdin", sandbox=self._adapter.sandbox_id)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK


class AsyncE2bAdapter(AsyncSandboxAdapter):
    provider_name = PROVIDER

    def __init__(
        self,
        sandbox: e2b.AsyncSandbox,
        sandbox_id: str,
        config: SandboxConfig,
        settings: Settings,
        options: E2bConfig,
    ) -> None:
        super().__init__(sandbox_id, config, settings, options)
        self._sbx = sandbox
        self._e2b = options
        self._cwd = start_directory(_sdk.HOME, config.working_directory, "e2b")

    # -- lifecycle ------------------------------------------------------------------------------------

    @staticmethod
    def _template(config: SandboxConfig, options: E2bConfig) -> str | None:
        import os

        return config.image or options.template or os.environ.get("E2B_TEMPLATE") or None

    @classmethod
    def _metadata(cls, sandbox_id: str, config: SandboxConfig, options: E2bConfig) -> dict[str, str]:
        # what differs from SandboxConfig's defaults, credentials left out: connect() rebuilds the rest
        stored = config.model_dump(mode="json", exclude={"provider_config"}, exclude_defaults=True)
        secret = E2bConfig.credential_env()
        if kept := {k: v for k, v in config.provider_config.items() if k not in secret}:
            stored["provider_config"] = kept
        return {**options.metadata, _sdk.META_SANDBOX: sandbox_id, _sdk.META_CONFIG: json.dumps(stored)}

    @classmethod
    async def _new_e2b_sandbox(
        cls, template: str | None, sandbox_id: str, config: SandboxConfig, options: E2bConfig
    ) -> e2b.AsyncSandbox:
        """Create the E2B sandbox. A create whose answer was lost (timeout, dropped connection) is tried
        again with the same idempotency key, which gets the sandbox the lost answer made, if any: no second
        one. When every try fails, a sandbox made meanwhile is swept by its metadata; one made even later
        ends with its lifetime. (429 and 5xx answers are the SDK's own retries.)"""
        arguments = {
            "template": template,
            "timeout": options.lifetime,
            "metadata": cls._metadata(sandbox_id, config, options),
            "envs": {**config.environment_vars, SANDBOX_MARKER: sandbox_id},
            "idempotency_key": uuid.uuid4().hex,
            **_network(options),
            **_api(options),
        }
        lost = (BackendTimeoutError, BackendConnectionError)
        try:
            return await _retried(
                options,
                "create sandbox",
                lambda: e2b.AsyncSandbox.create(**arguments),
                sandbox=sandbox_id,
                only=lost,  # (not a 429 or a 5xx answer: the SDK has retried those already)
                wait_initial=0.2,
            )
        except lost:
            with contextlib.suppress(GrainchainError):
                for leftover in await cls._find(options, sandbox_id):
                    with translated("sweep a sandbox of a failed create"):
                        await e2b.AsyncSandbox.kill(leftover.sandbox_id, **_api(options))
            raise

    @classmethod
    async def create(cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig) -> Self:
        e2b_options = _options(options)
        start_directory(_sdk.HOME, config.working_directory, "e2b")  # refused before anything is made
        sandbox_id = "e2b-" + uuid.uuid4().hex[:20]
        sbx = await cls._new_e2b_sandbox(cls._template(config, e2b_options), sandbox_id, config, e2b_options)
        adapter = cls(sbx, sandbox_id, config, backend.settings, e2b_options)
        try:
            if adapter._cwd != _sdk.HOME:
                await adapter.make_directory(adapter._cwd)
        except BaseException:
            with contextlib.suppress(Exception):
                await sbx.kill()
            raise
        return adapter

    @classmethod
    async def _find(cls, options: E2bConfig, sandbox_id: str | None) -> list[Any]:
        """The E2B sandboxes that are grainchain's (with this grainchain id), running or paused."""
        metadata = None if sandbox_id is None else {_sdk.META_SANDBOX: sandbox_id}
        query = e2b.SandboxQuery(metadata=metadata)
        found: list[Any] = []
        paginator = e2b.AsyncSandbox.list(query=query, **_api(options))
        while paginator.has_next:
            found.extend(await _retried(options, "list sandboxes", paginator.next_items))
        return [info for info in found if _sdk.META_SANDBOX in (info.metadata or {})]

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        e2b_options = _options(options)
        found = await cls._find(e2b_options, sandbox_id)
        if not found:
            raise SandboxNotFoundError(f"no e2b sandbox with id {sandbox_id!r}", provider=PROVIDER)
        info = found[0]
        stored = config
        with contextlib.suppress(ValueError, KeyError):
            stored = SandboxConfig.model_validate_json(info.metadata[_sdk.META_CONFIG])
        # a paused sandbox is resumed (memory and all); the given config's credentials reach it
        sbx = await _retried(
            e2b_options,
            "connect to sandbox",
            lambda: e2b.AsyncSandbox.connect(
                info.sandbox_id, timeout=e2b_options.lifetime, **_api(e2b_options)
            ),
            sandbox=sandbox_id,
        )
        stored_options = _options(parse_options(backend.provider, backend.settings, stored.provider_config))
        merged = stored_options.model_copy(update={"api_key": e2b_options.api_key})
        return cls(sbx, sandbox_id, stored, backend.settings, merged)

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        found = await cls._find(_options(backend.options), None)
        return [
            SandboxInfo(
                sandbox_id=info.metadata[_sdk.META_SANDBOX],
                provider=PROVIDER,
                status=SandboxStatus.running if str(info.state) == "running" else SandboxStatus.terminated,
                created_at=info.started_at if info.started_at.tzinfo else info.started_at.replace(tzinfo=UTC),
                metadata={"e2b_sandbox_id": info.sandbox_id, "template": str(info.template_id)},
            )
            for info in found
        ]

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> Mapping[Feature, str]:
        return {}

    async def aclose(self) -> None:
        try:
            await self._handles.kill_all()
            if self.config.auto_cleanup:
                with contextlib.suppress(SandboxNotFoundError):  # (also: a retry after a lost answer)
                    await self._retried("kill sandbox", self._sbx.kill)
            else:  # kept: paused with its files only (no process outlives close); connect() boots it again
                with (
                    translated("pause sandbox", sandbox=self.sandbox_id),
                    contextlib.suppress(SandboxNotFoundError),
                ):
                    await self._sbx.pause(mode="filesystem")
        finally:
            self.status = SandboxStatus.closed

    async def detach(self) -> None:
        with translated("extend the sandbox's lifetime", sandbox=self.sandbox_id):
            await self._sbx.set_timeout(self._e2b.keep_alive_lifetime)
        self.status = SandboxStatus.running

    # -- commands -------------------------------------------------------------------------------------

    async def _launch(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        *,
        stdin: bool = False,
    ) -> _Command:
        cwd = self._cwd
        if working_dir is not None:
            cwd = self._path(working_dir)
            info = await self._stat(cwd)
            if info is None or not info.is_directory:
                raise FileNotFoundInSandboxError(cwd, provider=PROVIDER)
        marker = f"{EXEC_MARKER}={uuid.uuid4().hex}"
        envs = {**(environment or {}), EXEC_MARKER: marker.split("=", 1)[1]}
        # the stream's deadline is the command's: envd ends the command when it passes (0: none)
        timeout = 0.0 if deadline is None else max(deadline - time.monotonic(), 0.001)
        sink = _Sink()
        with translated("start a command", sandbox=self.sandbox_id):
            handle = await _sdk.astart_command(
                self._sbx,
                command,
                cwd=cwd,
                envs=envs,
                timeout=timeout,
                on_stdout=sink.stdout,
                on_stderr=sink.stderr,
                stdin=stdin,
            )
        # no await before this: the handle has not read any output yet
        sink.raw = _sdk.tee_raw_output(handle, sink.stdout_bytes, sink.stderr_bytes)
        return _Command(self, handle, sink, marker)

    async def _kill_marked(self, marker: str) -> None:
        """Kill every process of a command (they carry its marker), through a helper command."""
        with (
            translated("kill a command's processes", sandbox=self.sandbox_id),
            contextlib.suppress(e2b.CommandExitException),
        ):
            await self._sbx.commands.run(
                'sh -c "$GRAINCHAIN_KILL" sh "$GRAINCHAIN_KILL_MARKER"',
                envs={"GRAINCHAIN_KILL": KILL_MARKED_SCRIPT, "GRAINCHAIN_KILL_MARKER": marker},
                timeout=30,
            )

    async def _running_processes(self) -> list[str]:
        """Processes commands started that still run (`cmd &` and `setsid` ones too: they carry the exec
        marker; commands.list() knows only the shells the SDK started), through a helper command."""
        with translated("list the sandbox's processes", sandbox=self.sandbox_id):
            result = await self._sbx.commands.run(
                'sh -c "$GRAINCHAIN_LIST" sh "$GRAINCHAIN_LIST_SANDBOX"',
                envs={
                    "GRAINCHAIN_LIST": LIST_MARKED_SCRIPT,
                    "GRAINCHAIN_LIST_SANDBOX": f"{SANDBOX_MARKER}={self.sandbox_id}",
                },
                timeout=30,
            )
        return listed_processes(result.stdout)

    # -- files ----------------------------------------------------------------------------------------

    async def _retried(self, what: str, call: ACall[T], *, path: str | None = None) -> T:
        return await _retried(self._e2b, what, call, path=path, sandbox=self.sandbox_id)

    def _path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self._cwd, path))

    async def _stat(self, target: str) -> FileInfo | None:
        try:
            info = await self._retried("stat", lambda: self._sbx.files.get_info(target), path=target)
            return _file_info(info)
        except FileNotFoundInSandboxError:
            return None

    async def _not_a_file(self, target: str, exc: GrainchainError) -> GrainchainError:
        """What a failed read or write of `target` means: missing, a directory in the way, or `exc`."""
        if isinstance(exc, FileNotFoundInSandboxError):
            return exc
        info = await self._stat(target)
        if info is not None and info.is_directory:
            return InvalidArgumentError(f"{target} is a directory", argument="path", provider=PROVIDER)
        return exc

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        target = self._path(path)
        data = self.content_bytes(content)
        if mode.startswith("a"):
            with contextlib.suppress(FileNotFoundInSandboxError):
                data = await self.download_file(target) + data
        try:
            # (a write replaces the whole file: trying it again is harmless)
            await self._retried("upload file", lambda: self._sbx.files.write(target, data), path=target)
        except (ProviderError, AuthenticationError) as exc:  # envd's generic failure, or its 403 on a path
            # (the SDK's authentication error): refused, if a command is refused too
            error = await refusals.refusal(self, target, posixpath.dirname(target), exc, PROVIDER)
            raise await self._not_a_file(target, error) from exc.__cause__
        except GrainchainError as exc:
            raise await self._not_a_file(target, exc) from exc.__cause__

    async def download_file(self, path: str) -> bytes:
        target = self._path(path)
        try:
            data = await self._retried(
                "download file", lambda: self._sbx.files.read(target, format="bytes"), path=target
            )
            return bytes(data)
        except GrainchainError as exc:
            raise await self._not_a_file(target, exc) from exc.__cause__

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        target = self._path(path)
        try:  # (a symlink to a directory lists the directory, as `ls` does)
            entries = await self._retried(
                "list files", lambda: self._sbx.files.list(target, depth=1), path=target
            )
        except GrainchainError as exc:
            info = await self._stat(target)
            if info is None:
                raise FileNotFoundInSandboxError(target, provider=PROVIDER) from exc
            if not info.is_directory and not info.is_symlink:
                raise InvalidArgumentError(
                    f"{target} is not a directory", argument="path", provider=PROVIDER
                ) from exc
            raise
        return [_file_info(entry) for entry in entries]

    async def get_file_info(self, path: str) -> FileInfo:
        target = self._path(path)
        info = await self._stat(target)
        if info is None:
            raise FileNotFoundInSandboxError(target, provider=PROVIDER)
        return info

    async def file_exists(self, path: str) -> bool:
        target = self._path(path)
        return bool(await self._retried("file exists", lambda: self._sbx.files.exists(target), path=target))

    async def delete_file(self, path: str) -> None:
        target = self._path(path)
        if target == "/":
            raise InvalidArgumentError("refusing to delete /", argument="path", provider=PROVIDER)
        if await self._stat(target) is None:
            raise FileNotFoundInSandboxError(target, provider=PROVIDER)
        try:
            with translated("delete file", path=target, sandbox=self.sandbox_id):
                await self._sbx.files.remove(target)
        except (ProviderError, AuthenticationError) as exc:  # envd's generic failure, or its 403 on a path
            # (the SDK's authentication error): refused, if a command is refused too
            raise await refusals.refusal(self, target, posixpath.dirname(target), exc, PROVIDER) from exc

    async def make_directory(self, path: str) -> None:
        target = self._path(path)
        info = await self._stat(target)
        if info is not None:
            if info.is_directory:
                return
            raise InvalidArgumentError(
                f"cannot create directory {target} (a file is in the way)", argument="path", provider=PROVIDER
            )
        try:
            with translated("make directory", path=target, sandbox=self.sandbox_id):
                await self._sbx.files.make_dir(target)
        except (ProviderError, AuthenticationError) as exc:  # envd's generic failure, or its 403 on a path
            # (the SDK's authentication error): refused, if a command is refused too
            raise await refusals.refusal(self, target, target, exc, PROVIDER) from exc

    # -- snapshots ------------------------------------------------------------------------------------

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        mode: Literal["full", "filesystem"] = "full" if kind is SnapshotKind.memory else "filesystem"
        with translated("create snapshot", sandbox=self.sandbox_id):
            info = await self._sbx.create_snapshot(_snapshot_name(self.sandbox_id, kind), mode=mode)
        return str(info.snapshot_id)

    async def _snapshots(self) -> dict[str, SnapshotInfo]:
        """grainchain's snapshots on the account (as on every provider, a snapshot of one sandbox restores
        into any other)."""
        found: dict[str, SnapshotInfo] = {}
        paginator = e2b.AsyncSandbox.list_snapshots(**_api(self._e2b))
        while paginator.has_next:
            for snap in await self._retried("list snapshots", paginator.next_items):
                parsed = _parse_snapshot_name(list(snap.names), snap.snapshot_id)
                if parsed is not None:
                    found[snap.snapshot_id] = SnapshotInfo(
                        snapshot_id=snap.snapshot_id,
                        provider=PROVIDER,
                        kind=parsed[1],
                        created_at=parsed[2],
                        source_sandbox_id=parsed[0],
                    )
        return found

    async def list_snapshots(self) -> list[SnapshotInfo]:
        return sorted((await self._snapshots()).values(), key=lambda s: s.created_at)

    async def _grainchain_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        found = (await self._snapshots()).get(snapshot_id)
        if found is None:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
        return found

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._grainchain_snapshot(snapshot_id)
        with translated("delete snapshot", sandbox=self.sandbox_id):
            deleted = await e2b.AsyncSandbox.delete_snapshot(snapshot_id, **_api(self._e2b))
        if not deleted:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        """E2B starts a snapshot as a new sandbox: it takes this one's place (same grainchain id and
        metadata), then the old one is killed."""
        await self._grainchain_snapshot(snapshot_id)
        await self._handles.kill_all()
        fresh = await self._new_e2b_sandbox(snapshot_id, self.sandbox_id, self.config, self._e2b)
        old, self._sbx = self._sbx, fresh
        with contextlib.suppress(SandboxNotFoundError):
            await self._retried("kill the sandbox a restore replaced", old.kill)

    # -- terminate / wake up --------------------------------------------------------------------------

    async def terminate(self) -> None:
        await self._handles.kill_all()  # their output streams to this client: they cannot outlive it
        with translated("pause sandbox", sandbox=self.sandbox_id):
            await self._sbx.pause()
        self.status = SandboxStatus.terminated

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        with translated("resume sandbox", sandbox=self.sandbox_id):
            self._sbx = await e2b.AsyncSandbox.connect(
                self._sbx.sandbox_id, timeout=self._e2b.lifetime, **_api(self._e2b)
            )
        self.status = SandboxStatus.running
        if snapshot_id is not None:
            await self.restore_snapshot(snapshot_id)
