"""The modal provider's adapter: one grainchain sandbox is one Modal sandbox, driven through the official
SDK (its `.aio` calls here; `python -m codegen` writes the blocking twin in ../_sync/ without them).

Identity: a grainchain sandbox id ("modal-…") is a tag of the Modal sandbox. A restore or a wake-up makes
a new Modal sandbox (Modal starts an image as a new sandbox) with the same tags, so the grainchain id stays
and connect()/list_sandboxes() find the sandbox by it. Modal keeps nothing about an image but its id, so
grainchain's snapshots (kind, time, source) and its terminated sandboxes (the image that keeps their
files) are entries of one Modal Dict of the app's environment.

Lifetime: every sandbox is created with provider_config `lifetime` (Modal ends it by itself afterwards), so
a forgotten sandbox ends; SandboxConfig.timeout is only each command's default timeout.

Commands run as `sh -c <command>` with a marker in their environment: a timeout or a kill ends every
process the command started (Modal's SDK has no call that kills an exec'd process).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

import modal
import stamina

from grainchain._acompat import AsyncEvent, AsyncTask, astart_task
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
from grainchain.providers.modal._sdk import (
    PROVIDER,
    TAG_CONFIG,
    TAG_CREATED,
    TAG_SANDBOX,
    WORKSPACE,
    ACall,
    T,
    translated,
)
from grainchain.providers.modal.config import ModalConfig
from grainchain.settings import Settings

KILLED = 128 + 9  # the exit code of a command grainchain killed (timeout, kill())
STATE_DICT = "grainchain-state"  # the Modal Dict of grainchain's snapshots and terminated sandboxes
_SNAPSHOT = "snapshot:"  # its keys: "snapshot:<image id>" → SnapshotInfo fields
_TERMINATED = "terminated:"  # "terminated:<grainchain id>" → the image and tags of a terminated sandbox
STOP_GRACE = 10.0  # seconds a killed command's output streams get to end
STDIN_PIECE = 8 << 20  # bytes of stdin per write + drain (the SDK buffers at most 16 MiB)


def _options(options: ProviderConfig) -> ModalConfig:
    assert isinstance(options, ModalConfig), type(options)
    return options


class AsyncModalBackend(AsyncBackend):
    """The modal provider's shared part: one authenticated Modal client, the app and the state Dict (made on
    first use)."""

    _client: modal.Client | None = None
    _app: modal.App | None = None
    _state: modal.Dict | None = None
    _images: dict[str | None, modal.Image] | None = None

    def image(self, name: str | None) -> modal.Image:
        """A registry image by name (None: Modal's default, debian_slim), one object per backend: the SDK
        builds (looks up) an image object once, against the server of its first use."""
        if self._images is None:
            self._images = {}
        if name not in self._images:
            self._images[name] = modal.Image.from_registry(name) if name else modal.Image.debian_slim()
        return self._images[name]

    async def client(self) -> modal.Client | None:
        """The client of provider_config's token pair; None: the SDK's own (profile, environment)."""
        if self._client is None:
            options = _options(self.options)
            token_id, token_secret = options.secret("token_id"), options.secret("token_secret")
            if token_id and token_secret:
                with translated("authenticate"):
                    self._client = await modal.Client.from_credentials.aio(token_id, token_secret)
        return self._client

    async def app(self) -> modal.App:
        if self._app is None:
            options = _options(self.options)
            with translated("look up the app"):
                self._app = await modal.App.lookup.aio(
                    options.app_name,
                    create_if_missing=True,
                    client=await self.client(),
                    environment_name=options.environment,
                )
        return self._app

    async def state(self) -> modal.Dict:
        if self._state is None:
            options = _options(self.options)
            self._state = modal.Dict.from_name(  # (hydrated by its first call)
                STATE_DICT,
                create_if_missing=True,
                client=await self.client(),
                environment_name=options.environment,
            )
        return self._state

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close.aio()
        await super().aclose()


def _shared(backend: AsyncBackend) -> AsyncModalBackend:
    if not isinstance(backend, AsyncModalBackend):
        raise TypeError(f"the modal adapter needs an AsyncModalBackend, got {type(backend).__name__}")
    return backend


async def _retried(
    options: ModalConfig, what: str, call: ACall[T], *, path: str | None = None, sandbox: str | None = None
) -> T:
    """Make an idempotent SDK call; a lost connection or answer (BackendConnectionError/TimeoutError) is
    tried again up to provider_config `retries` times with stamina's backoff. The first try runs outside
    stamina (its set-up costs as much as a small call)."""
    lost = (BackendConnectionError, BackendTimeoutError)
    try:
        with translated(what, path=path, sandbox=sandbox):
            return await call()
    except lost:
        if not options.retries:
            raise
    async for attempt in stamina.retry_context(
        on=lost, attempts=options.retries, timeout=None, wait_initial=0.1
    ):
        with attempt, translated(what, path=path, sandbox=sandbox):
            return await call()
    raise AssertionError("unreachable: stamina re-raises the last error")


def _file_info(entry: Any) -> FileInfo:
    is_symlink = str(entry.type.value) == "symlink"
    is_directory = str(entry.type.value) == "directory"
    modified = entry.modified_time
    if not isinstance(modified, datetime):
        modified = datetime.fromtimestamp(float(modified), UTC)
    elif modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return FileInfo(
        path=entry.path,
        name=entry.name or posixpath.basename(entry.path) or "/",
        size=0 if is_directory else int(entry.size),
        is_directory=is_directory,
        is_symlink=is_symlink,
        mode=int(entry.mode) & 0o7777,
        modified_time=modified,
    )


class _Command:
    """A command started through the SDK (grainchain/_async/commands.py's CommandRun). Its two output
    streams are read by two tasks (threads in the blocking client) that feed the collector; `changed` wakes
    the pump when one ends or the output overflows."""

    def __init__(self, adapter: AsyncModalAdapter, process: Any, marker: str) -> None:
        self.id = marker.split("=", 1)[1]
        self._adapter = adapter
        self._process = process
        self._marker = marker
        self._code: int | None = None
        self._readers: list[AsyncTask] = []
        self._ended = {stream: AsyncEvent() for stream in Stream}
        self._over = AsyncEvent()  # both streams ended, or the output overflowed
        self._output: OutputCollector | None = None

    async def pid(self) -> int | None:
        return None  # Modal gives an exec'd process no pid

    async def _read(self, stream: Stream) -> None:
        output = self._output
        assert output is not None
        source = self._process.stdout if stream is Stream.STDOUT else self._process.stderr
        try:
            async for chunk in source:
                output.feed(stream, chunk)
                if output.overflowed:
                    return
        finally:
            # (each reader marks its own end before it looks at the other's: one of them sees both)
            self._ended[stream].set()
            if output.overflowed or all(ended.is_set() for ended in self._ended.values()):
                self._over.set()

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        if self._output is None:
            self._output = output
            self._readers = [
                astart_task(lambda: self._read(Stream.STDOUT)),
                astart_task(lambda: self._read(Stream.STDERR)),
            ]
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not await self._over.wait(remaining) or output.overflowed:
            return False
        for reader in self._readers:
            with translated("read a command's output", sandbox=self._adapter.sandbox_id):
                await reader.join()
        with translated("wait for a command", sandbox=self._adapter.sandbox_id):
            self._code = int(await self._process.wait.aio())
        return True

    async def stop(self, output: OutputCollector) -> None:
        await self.signal()
        for reader in self._readers:  # what it wrote before it died
            with contextlib.suppress(Exception):
                await reader.join(STOP_GRACE)
        with contextlib.suppress(Exception), translated("wait for a killed command"):
            self._code = int(await self._process.wait.aio())
        if self._code is None or self._code < 0:
            self._code = KILLED

    async def signal(self) -> None:
        await self._adapter._kill_marked(self._marker)

    async def exit_code(self) -> int:
        return KILLED if self._code is None else self._code

    async def abandon(self) -> int | None:
        with contextlib.suppress(GrainchainError):
            await self.signal()
        return self._code

    async def close(self) -> None:
        return None

    async def write_stdin(self, data: bytes) -> None:
        # the SDK buffers what write() gets (at most STDIN_PIECE at a time) and drain() sends it
        for start in range(0, len(data), STDIN_PIECE):
            try:
                self._process.stdin.write(data[start : start + STDIN_PIECE])
                with translated("write to a command's stdin", sandbox=self._adapter.sandbox_id):
                    try:
                        await self._process.stdin.drain.aio()
                    except modal.exception.ConflictError as exc:
                        # FAILED_PRECONDITION: the command ended or its stdin was closed
                        raise StdinClosedError(
                            f"the command no longer reads its standard input ({exc})", provider=PROVIDER
                        ) from None
            except ValueError as exc:  # the SDK's writer was closed
                raise StdinClosedError(
                    f"the command's standard input was closed ({exc})", provider=PROVIDER
                ) from None

    async def close_stdin(self) -> None:
        self._process.stdin.write_eof()
        with (
            translated("close a command's stdin", sandbox=self._adapter.sandbox_id),
            contextlib.suppress(modal.exception.ConflictError),  # it ended: nothing reads it any more
        ):
            await self._process.stdin.drain.aio()


class AsyncModalAdapter(AsyncSandboxAdapter):
    provider_name = PROVIDER
    backend_class = AsyncModalBackend

    def __init__(
        self,
        sandbox: modal.Sandbox | None,
        sandbox_id: str,
        config: SandboxConfig,
        settings: Settings,
        options: ModalConfig,
        backend: AsyncModalBackend,
    ) -> None:
        super().__init__(sandbox_id, config, settings, options, backend)
        self._sb = sandbox
        self._modal = options
        self._shared = backend
        self._cwd = start_directory(WORKSPACE, config.working_directory, "modal")
        # whether grainchain's state may hold this sandbox as terminated (close then removes the entry)
        self._terminated_entry = sandbox is None

    # -- lifecycle ------------------------------------------------------------------------------------

    @staticmethod
    def _image(backend: AsyncModalBackend, config: SandboxConfig, options: ModalConfig) -> modal.Image:
        if options.dockerfile is not None:
            return modal.Image.from_dockerfile(options.dockerfile, context_dir=options.build_context)
        if options.image is not None and not isinstance(options.image, str):
            return options.image  # type: ignore[no-any-return]
        return backend.image(options.image or config.image)

    @staticmethod
    def _tags(sandbox_id: str, config: SandboxConfig, options: ModalConfig) -> dict[str, str]:
        # what differs from SandboxConfig's defaults, credentials and the image object left out: connect()
        # rebuilds the rest
        stored = config.model_dump(mode="json", exclude={"provider_config"}, exclude_defaults=True)
        secret = ModalConfig.credential_env()
        kept = {k: v for k, v in config.provider_config.items() if k not in secret and k != "image"}
        if isinstance(config.provider_config.get("image"), str):
            kept["image"] = config.provider_config["image"]
        if kept:
            stored["provider_config"] = kept
        return {
            **options.tags,
            TAG_SANDBOX: sandbox_id,
            TAG_CONFIG: json.dumps(stored),
            TAG_CREATED: str(int(time.time())),
        }

    @classmethod
    async def _new_modal_sandbox(
        cls,
        backend: AsyncModalBackend,
        image: modal.Image,
        tags: dict[str, str],
        config: SandboxConfig,
        options: ModalConfig,
    ) -> modal.Sandbox:
        arguments: dict[str, Any] = {
            "app": await backend.app(),
            "image": image,
            "tags": tags,
            "env": {**config.environment_vars, SANDBOX_MARKER: tags[TAG_SANDBOX]},
            "timeout": options.lifetime,
            "idle_timeout": options.idle_timeout,
            "workdir": WORKSPACE,
            "client": await backend.client(),
            "environment_name": options.environment,
        }
        if options.network == "none":
            arguments["block_network"] = True
        elif isinstance(options.network, list):
            arguments["outbound_cidr_allowlist"] = options.network
        if config.cpu_limit is not None:
            arguments["cpu"] = config.cpu_limit
        if config.memory_limit is not None:
            mib = max(int(config.memory_limit) // (1024 * 1024), 1)
            arguments["memory"] = (mib, mib)
        if config.ports:
            arguments["unencrypted_ports"] = list(config.ports)
        with translated("create sandbox", sandbox=tags[TAG_SANDBOX]):
            return await modal.Sandbox.create.aio(**arguments)

    @classmethod
    async def create(cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig) -> Self:
        shared, modal_options = _shared(backend), _options(options)
        start_directory(WORKSPACE, config.working_directory, "modal")  # refused before anything is made
        sandbox_id = "modal-" + uuid.uuid4().hex[:20]
        tags = cls._tags(sandbox_id, config, modal_options)
        sb = await cls._new_modal_sandbox(
            shared, cls._image(shared, config, modal_options), tags, config, modal_options
        )
        adapter = cls(sb, sandbox_id, config, backend.settings, modal_options, shared)
        try:
            if adapter._cwd != WORKSPACE:
                await adapter.make_directory(adapter._cwd)
        except BaseException:
            with contextlib.suppress(Exception):
                await sb.terminate.aio()
            raise
        return adapter

    @classmethod
    async def _find(cls, backend: AsyncModalBackend, sandbox_id: str | None) -> list[modal.Sandbox]:
        """The running Modal sandboxes that are grainchain's (with this grainchain id)."""
        tags = {TAG_SANDBOX: sandbox_id} if sandbox_id is not None else None
        app = await backend.app()
        client = await backend.client()

        async def listed() -> list[modal.Sandbox]:
            found = []
            async for sb in modal.Sandbox.list.aio(app_id=app.app_id, tags=tags, client=client):
                found.append(sb)
            return found

        return await _retried(_options(backend.options), "list sandboxes", listed)

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        shared, modal_options = _shared(backend), _options(options)
        found = await cls._find(shared, sandbox_id)
        entry = None
        if found:
            sb: modal.Sandbox | None = found[0]
            with translated("read the sandbox's tags", sandbox=sandbox_id):
                tags = await found[0].get_tags.aio()
        else:  # terminated (or kept by a close): woken up below, with its files
            entry = await _state_get(shared, _TERMINATED + sandbox_id)
            if entry is None:
                raise SandboxNotFoundError(f"no modal sandbox with id {sandbox_id!r}", provider=PROVIDER)
            sb, tags = None, entry["tags"]
        stored = config
        with contextlib.suppress(ValueError, KeyError):
            stored = SandboxConfig.model_validate_json(tags[TAG_CONFIG])
        stored_options = _options(parse_options(backend.provider, backend.settings, stored.provider_config))
        merged = stored_options.model_copy(
            update={"token_id": modal_options.token_id, "token_secret": modal_options.token_secret}
        )
        adapter = cls(sb, sandbox_id, stored, backend.settings, merged, shared)
        if entry is not None:
            await adapter.wake_up()
        return adapter

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        shared = _shared(backend)
        found: list[SandboxInfo] = []
        for sb in await cls._find(shared, None):
            with translated("read a sandbox's tags"):
                tags = await sb.get_tags.aio()
            if TAG_SANDBOX in tags:
                found.append(
                    SandboxInfo(
                        sandbox_id=tags[TAG_SANDBOX],
                        provider=PROVIDER,
                        status=SandboxStatus.running,
                        created_at=datetime.fromtimestamp(int(tags.get(TAG_CREATED, 0)), UTC),
                        metadata={"modal_sandbox_id": sb.object_id},
                    )
                )
        for key, entry in await _state_items(shared, _TERMINATED):
            found.append(
                SandboxInfo(
                    sandbox_id=key[len(_TERMINATED) :],
                    provider=PROVIDER,
                    status=SandboxStatus.terminated,
                    created_at=datetime.fromtimestamp(entry["at"], UTC),
                    metadata={"image_id": entry["image_id"]},
                )
            )
        return found

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> Mapping[Feature, str]:
        return {}

    async def aclose(self) -> None:
        try:
            await self._handles.kill_all()
            if self.config.auto_cleanup:
                if self._sb is not None:
                    with contextlib.suppress(SandboxNotFoundError):
                        await self._retried("terminate sandbox", self._sb.terminate.aio)
                if self._terminated_entry:
                    await _state_pop(self._shared, _TERMINATED + self.sandbox_id)
            elif self._sb is not None:  # kept: its files only (no process outlives close); connect() wakes it
                await self._retire()
        finally:
            self.status = SandboxStatus.closed

    async def detach(self) -> None:
        self.status = SandboxStatus.running  # Modal ends the sandbox at its lifetime by itself

    # -- commands -------------------------------------------------------------------------------------

    def _running(self) -> modal.Sandbox:
        if self._sb is None:
            raise SandboxNotFoundError(
                f"{self.sandbox_id} is terminated: wake_up() it first", provider=PROVIDER
            )
        return self._sb

    async def _launch(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        *,
        stdin: bool = False,
    ) -> _Command:
        cwd = self._cwd if working_dir is None else self._path(working_dir)
        if working_dir is not None:
            info = await self._stat(cwd)
            if info is None or not info.is_directory:
                raise FileNotFoundInSandboxError(cwd, provider=PROVIDER)
        marker = f"{EXEC_MARKER}={uuid.uuid4().hex}"
        env: dict[str, str | None] = {**(environment or {}), EXEC_MARKER: marker.split("=", 1)[1]}
        with translated("start a command", sandbox=self.sandbox_id):
            process = await self._running().exec.aio("sh", "-c", command, workdir=cwd, env=env, text=False)
        run = _Command(self, process, marker)
        # Modal leaves an exec'd command's stdin open: without stdin it reads end of file at once
        if not stdin:
            try:
                await run.close_stdin()
            except BaseException:
                with contextlib.suppress(Exception):
                    await run.abandon()
                raise
        return run

    async def _kill_marked(self, marker: str) -> None:
        """Kill every process of a command (they carry its marker), through a helper command."""
        with translated("kill a command's processes", sandbox=self.sandbox_id):
            helper = await self._running().exec.aio(
                "sh", "-c", KILL_MARKED_SCRIPT, "sh", marker, timeout=30, text=False
            )
            await helper.wait.aio()

    async def _running_processes(self) -> list[str]:
        """Processes commands started that still run (`cmd &` and `setsid` ones too: they carry the exec
        marker), through a helper command."""
        with translated("list the sandbox's processes", sandbox=self.sandbox_id):
            helper = await self._running().exec.aio(
                "sh", "-c", LIST_MARKED_SCRIPT, "sh", f"{SANDBOX_MARKER}={self.sandbox_id}", timeout=30
            )
            listed = await helper.stdout.read.aio()
            await helper.wait.aio()
        return listed_processes(listed)

    # -- files ----------------------------------------------------------------------------------------

    async def _retried(self, what: str, call: ACall[T], *, path: str | None = None) -> T:
        return await _retried(self._modal, what, call, path=path, sandbox=self.sandbox_id)

    def _path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self._cwd, path))

    async def _stat(self, target: str) -> FileInfo | None:
        fs = self._running().filesystem
        try:
            return _file_info(await self._retried("stat", lambda: fs.stat.aio(target), path=target))
        except FileNotFoundInSandboxError:
            return None
        except InvalidArgumentError:  # a file where a directory was expected along the path
            return None

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        target = self._path(path)
        data = self.content_bytes(content)
        fs = self._running().filesystem
        if mode.startswith("a"):
            with contextlib.suppress(FileNotFoundInSandboxError):
                data = await self.download_file(target) + data
        try:
            # (a write replaces the whole file: trying it again is harmless)
            await self._retried("upload file", lambda: fs.write_bytes.aio(data, target), path=target)
        except ProviderError as exc:  # the file tool's generic failure: refused, if a command is too
            raise await refusals.refusal(self, target, posixpath.dirname(target), exc, PROVIDER) from exc

    async def download_file(self, path: str) -> bytes:
        target = self._path(path)
        fs = self._running().filesystem
        return bytes(await self._retried("download file", lambda: fs.read_bytes.aio(target), path=target))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        target = self._path(path)
        fs = self._running().filesystem
        entries = await self._retried("list files", lambda: fs.list_files.aio(target), path=target)
        return [_file_info(entry) for entry in entries]

    async def get_file_info(self, path: str) -> FileInfo:
        target = self._path(path)
        info = await self._stat(target)
        if info is None:
            raise FileNotFoundInSandboxError(target, provider=PROVIDER)
        return info

    async def file_exists(self, path: str) -> bool:
        return await self._stat(self._path(path)) is not None

    async def delete_file(self, path: str) -> None:
        target = self._path(path)
        if target == "/":
            raise InvalidArgumentError("refusing to delete /", argument="path", provider=PROVIDER)
        fs = self._running().filesystem
        try:
            with translated("delete file", path=target, sandbox=self.sandbox_id):
                await fs.remove.aio(target, recursive=True)
        except ProviderError as exc:  # the file tool's generic failure: refused, if a command is too
            raise await refusals.refusal(self, target, posixpath.dirname(target), exc, PROVIDER) from exc

    async def make_directory(self, path: str) -> None:
        target = self._path(path)
        fs = self._running().filesystem
        try:
            await self._retried("make directory", lambda: fs.make_directory.aio(target), path=target)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                f"cannot create directory {target} (a file is in the way)", argument="path", provider=PROVIDER
            ) from exc.__cause__
        except (ProviderError, FileNotFoundInSandboxError) as exc:
            # the file tool's generic failure, or ENOENT where nobody may create entries (procfs):
            # refused, if a command is refused too
            raise await refusals.refusal(self, target, target, exc, PROVIDER) from exc

    # -- snapshots ------------------------------------------------------------------------------------

    async def _snapshot_image(self) -> str:
        sb = self._running()
        with translated("snapshot the sandbox's file system", sandbox=self.sandbox_id):
            image = await sb.snapshot_filesystem.aio()
        return str(image.object_id)

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        image_id = await self._snapshot_image()
        entry = {"kind": kind.value, "at": time.time(), "source": self.sandbox_id}
        await _state_put(self._shared, _SNAPSHOT + image_id, entry)
        return image_id

    async def list_snapshots(self) -> list[SnapshotInfo]:
        found = [
            SnapshotInfo(
                snapshot_id=key[len(_SNAPSHOT) :],
                provider=PROVIDER,
                kind=SnapshotKind(entry["kind"]),
                created_at=datetime.fromtimestamp(entry["at"], UTC),
                source_sandbox_id=entry["source"],
            )
            for key, entry in await _state_items(self._shared, _SNAPSHOT)
        ]
        return sorted(found, key=lambda s: s.created_at)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget the snapshot: it can no longer be restored. (Modal's SDK cannot delete an image: Modal
        removes a snapshot's image when its time to live, 30 days, is over.)"""
        if not await _state_pop(self._shared, _SNAPSHOT + snapshot_id):
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)

    async def _replace_with(self, image_id: str) -> None:
        """A new Modal sandbox from `image_id` takes this one's place (same tags), then the old one goes."""
        await self._handles.kill_all()
        tags = self._tags(self.sandbox_id, self.config, self._modal)
        with translated("look up the image", sandbox=self.sandbox_id):
            image = modal.Image.from_id(image_id, client=await self._shared.client())
        fresh = await self._new_modal_sandbox(self._shared, image, tags, self.config, self._modal)
        old, self._sb = self._sb, fresh
        if old is not None:
            with contextlib.suppress(SandboxNotFoundError):
                await _retried(self._modal, "terminate the sandbox a restore replaced", old.terminate.aio)

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        if await _state_get(self._shared, _SNAPSHOT + snapshot_id) is None:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
        await self._replace_with(snapshot_id)

    # -- terminate / wake up (emulated: Modal cannot pause a sandbox; its files live on in an image) ---------

    async def _retire(self) -> None:
        """Keep the files in an image, recorded in grainchain's state, and end the Modal sandbox."""
        sb = self._running()
        image_id = await self._snapshot_image()
        entry = {
            "image_id": image_id,
            "tags": self._tags(self.sandbox_id, self.config, self._modal),
            "at": time.time(),
        }
        self._terminated_entry = True
        await _state_put(self._shared, _TERMINATED + self.sandbox_id, entry)
        with (
            contextlib.suppress(SandboxNotFoundError),
            translated("terminate sandbox", sandbox=self.sandbox_id),
        ):
            await sb.terminate.aio()
        self._sb = None

    async def terminate(self) -> None:
        await self._handles.kill_all()
        await self._retire()
        self.status = SandboxStatus.terminated

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        if snapshot_id is not None and await _state_get(self._shared, _SNAPSHOT + snapshot_id) is None:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
        if self._sb is None:
            entry = await _state_get(self._shared, _TERMINATED + self.sandbox_id)
            if entry is None:
                raise SandboxNotFoundError(f"{self.sandbox_id} is gone", provider=PROVIDER)
            await self._replace_with(snapshot_id or entry["image_id"])
            await _state_pop(self._shared, _TERMINATED + self.sandbox_id)
            self._terminated_entry = False
        elif snapshot_id is not None:
            await self._replace_with(snapshot_id)
        self.status = SandboxStatus.running

    # -- ports ----------------------------------------------------------------------------------------

    async def port_address(self, port: int) -> str:
        if port not in (self.config.ports or []):
            raise InvalidArgumentError(
                f"port {port} was not published: list it in SandboxConfig.ports",
                argument="port",
                provider=PROVIDER,
            )
        sb = self._running()
        tunnels = await self._retried("look up the sandbox's tunnels", lambda: sb.tunnels.aio())
        host, mapped_port = tunnels[port].tcp_socket
        return f"{host}:{mapped_port}"


# -- grainchain's state Dict ---------------------------------------------------------------------------


async def _state_get(backend: AsyncModalBackend, key: str) -> Any:
    state = await backend.state()
    return await _retried(_options(backend.options), "read grainchain's state", lambda: state.get.aio(key))


async def _state_put(backend: AsyncModalBackend, key: str, value: Any) -> None:
    state = await backend.state()
    await _retried(_options(backend.options), "write grainchain's state", lambda: state.put.aio(key, value))


async def _state_pop(backend: AsyncModalBackend, key: str) -> bool:
    state = await backend.state()
    with translated("update grainchain's state"):
        return await state.pop.aio(key, None) is not None


async def _state_items(backend: AsyncModalBackend, prefix: str) -> list[tuple[str, Any]]:
    state = await backend.state()

    async def items() -> list[tuple[str, Any]]:
        return [(k, v) async for k, v in state.items.aio() if isinstance(k, str) and k.startswith(prefix)]

    return await _retried(_options(backend.options), "read grainchain's state", items)
