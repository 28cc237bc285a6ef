"""The docker provider: each sandbox is a container, driven through the Docker Engine API.

httpx over the engine's unix socket (or DOCKER_HOST) gives one code path for both clients: this module is
unasync'ed into grainchain/providers/docker/_sync/adapter.py. Flavour-free helpers live in grainchain/providers/docker/_engine.py.

* create: a container of the image (pulled when absent) kept alive by a waiting shell (dk.INIT_COMMAND),
  labelled `grainchain=1` and `grainchain.sandbox=<id>`; limits map to HostConfig.
* execute / start_process: an exec whose multiplexed stream is read as it arrives; every exec carries a
  GRAINCHAIN_EXEC_ID marker, and a timeout or kill runs a second exec that kills every process holding it.
* files: the archive endpoints (tar) for content, small shell scripts for listings, mkdir and rm.
* filesystem snapshots: `docker commit` to `grainchain-snapshot:<hex>`; that reference is the snapshot id,
  so it also works as SandboxConfig.image. Restore replaces the container, keeping the sandbox id.
* memory snapshots: a CRIU checkpoint (the container stops for it, so the commit that follows matches the
  memory), the commit, a copy of the checkpoint under the state directory, then the container resumes from
  its checkpoint. Restore starts a new container of the committed image from that checkpoint.
* terminate stops the container (files stay); wake_up starts it again, or restores a snapshot into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar

import httpcore
import httpx

from grainchain import _ownership as ownership
from grainchain import _tree
from grainchain._acompat import AsyncEvent, AsyncTask, arun_blocking, asleep, astart_task
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._async.backend import AsyncBackend, parse_options
from grainchain._async.commands import run_to_completion
from grainchain._checks import start_directory
from grainchain._commands import EXEC_MARKER, SANDBOX_MARKER
from grainchain._generated.features import Feature
from grainchain._output import OutputCollector, Stream
from grainchain._provider_config import ProviderConfig
from grainchain._provider_info import ProviderInfo
from grainchain._types import LocalPath, ResourceBounds
from grainchain.errors import (
    CapabilityError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    PermissionDeniedError,
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
from grainchain.providers import _criu as criu_probe
from grainchain.providers.docker import _engine as dk
from grainchain.providers.docker import _owners
from grainchain.providers.docker.config import DockerConfig
from grainchain.settings import Settings

_BIG_TIMEOUT = 600.0  # commits, checkpoints, restores and uploads of big things
_BUILD_TIMEOUT = 3600.0  # image pulls and builds (the read timeout: between two progress lines)
_STREAMS = {1: Stream.STDOUT, 2: Stream.STDERR}
_KILL_TIMEOUT = 30.0
_READ_CHUNK = 65536  # bytes read at a time from an exec's hijacked connection
# a start's answers: 304 when it runs already (another client, or a dead one's request, started it first)
_STARTED = (204, 304)
_UNPAUSE_WAIT = 10.0  # seconds a paused container is given to be unpaused by the commit that paused it
# Work in proportion to a size (listings) is done on the event loop up to this many bytes
# (microseconds), in a worker thread beyond (a big listing would stall every other sandbox).
_INLINE_BYTES = 64 * 1024

T = TypeVar("T")
P = ParamSpec("P")


async def _sized(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """fn(*args, **kwargs), off the event loop when `size` (bytes it works through) is big."""
    if size <= _INLINE_BYTES:
        return fn(*args, **kwargs)
    return await arun_blocking(fn, *args, **kwargs)


async def _pieces(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A request body of blocking pieces (a directory's tar: reading files), each made off the event loop."""
    while (piece := await arun_blocking(next, pieces, None)) is not None:
        yield piece


def _not_free(target: str, code: int) -> InvalidArgumentError:
    what = (
        "exists and is not a directory" if code == dk.NOT_A_DIRECTORY else "is a directory that is not empty"
    )
    return InvalidArgumentError(
        f"{target} {what} (a missing or empty directory is needed; delete_file() it first to replace it)",
        argument="sandbox_path",
        provider=dk.PROVIDER,
    )


async def _body(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A request body that httpx streams piece by piece."""
    for piece in pieces:  # noqa: RUF100, UP028 (in the blocking twin: no `yield from` in async)
        yield piece


class _Engine:
    """A thin Engine API client: JSON calls with timeouts, engine errors mapped to grainchain's."""

    def __init__(self) -> None:
        self.endpoint = dk.engine_endpoint()
        if self.endpoint.uds and not os.path.exists(self.endpoint.uds):  # (httpx would leak a socket)
            raise dk.unreachable(self.endpoint, FileNotFoundError(f"no socket at {self.endpoint.uds}"))
        # plain HTTP (socket or tcp://): no TLS, so no SSL context (building one costs ~25 ms per client)
        transport = httpx.AsyncHTTPTransport(uds=self.endpoint.uds, verify=False)
        self.client = httpx.AsyncClient(
            transport=transport,
            base_url=self.endpoint.base_url,
            timeout=httpx.Timeout(dk.API_TIMEOUT, connect=dk.CONNECT_TIMEOUT),
        )
        self._info: dict[str, Any] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def info(self) -> dict[str, Any]:
        """GET /info, once per engine client (it does not change while the engine runs)."""
        if self._info is None:
            self._info = await self.json("GET", "/info", "engine info")
        return self._info

    async def checkpoint_path(self, container_id: str, name: str) -> str:
        """Where the engine keeps a container's checkpoint `name` (its data directory is on this machine)."""
        root = str((await self.info()).get("DockerRootDir"))
        return dk.checkpoint_path(root, container_id, name)

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        ok: tuple[int, ...] = (200, 201, 204),
        timeout: float | None = dk.API_TIMEOUT,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call; a status outside `ok` raises the mapped error."""
        try:
            response = await self.client.request(
                method, url, timeout=httpx.Timeout(timeout, connect=dk.CONNECT_TIMEOUT), **kwargs
            )
        except (httpx.HTTPError, FileNotFoundError, ConnectionError) as exc:
            raise dk.transport_error(self.endpoint, what, exc) from exc
        if response.status_code not in ok:
            raise dk.engine_error(response.status_code, response.content, what, url)
        return response

    async def follow_progress(self, url: str, what: str, **kwargs: Any) -> dk.ProgressLog:
        """POST a pull or build and follow its progress stream to the end (logged as it goes)."""
        progress = dk.ProgressLog(what)
        response = await self.open_stream(url, what, _BUILD_TIMEOUT, **kwargs)
        try:
            async for line in response.aiter_lines():
                progress.feed(line)
        except httpx.HTTPError as exc:
            raise dk.transport_error(self.endpoint, what, exc) from exc
        finally:
            await response.aclose()
        return progress

    async def json(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        response = await self.request(method, url, what, **kwargs)
        return response.json() if response.content else None

    async def open_stream(
        self,
        url: str,
        what: str,
        timeout: float | None,
        method: str = "POST",
        ok: int = 200,
        **kwargs: Any,
    ) -> httpx.Response:
        """Call and return the response unread (exec output, pull and build progress, downloads); `ok`: the
        status expected (101: an upgraded connection, `response.extensions["network_stream"]`)."""
        request = self.client.build_request(
            method, url, timeout=httpx.Timeout(timeout, connect=dk.CONNECT_TIMEOUT), **kwargs
        )
        try:
            response = await self.client.send(request, stream=True)
        except (httpx.HTTPError, FileNotFoundError, ConnectionError) as exc:
            raise dk.transport_error(self.endpoint, what, exc) from exc
        if response.status_code != ok:
            content = await response.aread()
            await response.aclose()
            raise dk.engine_error(response.status_code, content, what, url)
        return response


class _Exec:
    """One exec'd command: its id, marker and the stream of its output; the shared command plumbing drives
    it (grainchain/_async/commands.py's CommandRun). Kills go to every process carrying its marker."""

    def __init__(
        self, adapter: AsyncDockerAdapter, exec_id: str, marker: str, response: httpx.Response
    ) -> None:
        self.adapter = adapter
        self.engine = adapter._engine
        self.id = exec_id
        self.exec_id = exec_id
        self.marker = marker
        self.response = response
        self.decoder = dk.FrameDecoder()
        self._watchdog: _Watchdog | None = None
        # an exec with stdin: the connection the engine hijacked (101), read and written raw
        self.stream: Any = response.extensions["network_stream"] if response.status_code == 101 else None
        self._stdin_closed = self.stream is None

    def watch(self, deadline: float) -> None:
        """Kill the command's processes when `deadline` passes, so that a silent command ends on time."""
        self._watchdog = _Watchdog(self.adapter, self.marker, deadline)

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        finished = await self._read(output, deadline)
        return not await self._stop_watchdog() and finished

    async def _stop_watchdog(self) -> bool:
        """Stop the watchdog, if any (idempotent): whether it fired (and killed the command)."""
        if self._watchdog is None:
            return False
        await self._watchdog.stop()
        return self._watchdog.fired

    async def stop(self, output: OutputCollector) -> None:
        """Kill the command's processes (unless the watchdog did); the stream has nothing more to say."""
        fired = await self._stop_watchdog()
        await self.close()
        if not fired:
            await self.adapter._kill_marked(self.marker)

    async def signal(self) -> None:
        await self.adapter._kill_marked(self.marker)

    async def abandon(self) -> int | None:
        await self._stop_watchdog()
        with contextlib.suppress(Exception):
            await self.adapter._kill_marked(self.marker)
        return None

    async def _read(self, output: OutputCollector, deadline: float | None) -> bool:
        """Copy output until the stream ends (True), or the deadline passes / the output overflows (False)."""
        if self.stream is not None:
            return await self._read_upgraded(output, deadline)
        try:
            async for chunk in self.response.aiter_raw():
                for stream, payload in self.decoder.feed(chunk):
                    if stream in _STREAMS:
                        output.feed(_STREAMS[stream], payload)
                if output.overflowed:
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        except httpx.ReadTimeout:
            return False  # the read timeout is the command's remaining time
        except httpx.HTTPError as exc:
            raise dk.transport_error(self.engine.endpoint, "reading the output of a command", exc) from exc
        return True

    async def _read_upgraded(self, output: OutputCollector, deadline: float | None) -> bool:
        """_read on a hijacked connection (no HTTP body: the frames come raw until the engine closes it)."""
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                chunk = await self.stream.read(_READ_CHUNK, timeout=remaining)
            except httpcore.ReadTimeout:
                return False
            except (httpcore.NetworkError, OSError) as exc:
                raise dk.transport_error(
                    self.engine.endpoint, "reading the output of a command", exc
                ) from exc
            if not chunk:
                return True
            for stream, payload in self.decoder.feed(chunk):
                if stream in _STREAMS:
                    output.feed(_STREAMS[stream], payload)
            if output.overflowed:
                return False

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_closed:
            raise StdinClosedError("the command's standard input was closed", provider=dk.PROVIDER)
        try:
            await self.stream.write(data)
        except (httpcore.NetworkError, OSError) as exc:
            # the engine closed the connection (the command ended), or close_stdin() shut our side
            raise StdinClosedError(
                f"the command no longer reads its standard input ({exc or type(exc).__name__})",
                provider=dk.PROVIDER,
            ) from None

    async def close_stdin(self) -> None:
        """Half-close the hijacked connection: the engine closes the command's stdin (end of file) and
        goes on sending its output."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        raw = self.stream.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):  # already closed: nothing reads it
            raw.shutdown(socket.SHUT_WR)

    async def exit_code(self) -> int:
        await self.close()  # the stream is over
        for _ in range(200):  # the stream ends a moment before the engine records the exit
            info = await self.engine.json("GET", f"/exec/{self.exec_id}/json", "inspect exec")
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else -1
            await asleep(0.01)
        raise ProviderError("the docker engine still reports a finished command as running", retryable=True)

    async def pid(self) -> int | None:
        """The engine's (host) pid of the exec'd process; None if the engine has not recorded it in time."""
        for _ in range(50):
            info = await self.engine.json("GET", f"/exec/{self.exec_id}/json", "inspect exec")
            if info.get("Pid") or not info.get("Running", True):
                return int(info.get("Pid") or 0) or None
            await asleep(0.005)
        return None

    async def close(self) -> None:
        await self._stop_watchdog()
        if self.stream is not None:
            self._stdin_closed = True
            # a write_stdin blocked in another thread (the sync feed) wakes up only on a shutdown: a close
            # alone leaves it waiting for an engine that no longer reads
            with contextlib.suppress(OSError, AttributeError):
                self.stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            await self.response.aclose()


_DOCKERD_PID_FILE = "/var/run/docker.pid"  # dockerd's default --pidfile


def _dockerd_path() -> str | None:
    """The PATH of the local dockerd (read through its pid file and /proc; None when that cannot be read)."""
    try:
        with open(_DOCKERD_PID_FILE) as pid_file:
            pid = int(pid_file.read().strip())
        with open(f"/proc/{pid}/environ", "rb") as environ:
            entries = environ.read().split(b"\0")
    except (OSError, ValueError):
        return None
    for entry in entries:
        if entry.startswith(b"PATH="):
            return entry[len(b"PATH=") :].decode(errors="replace")
    return None


def _find_criu() -> str | None:
    """The criu the engine would run: runc, started by dockerd (through containerd), execs `criu` from the
    PATH it inherited, so dockerd's PATH is searched; where it cannot be read, this process's PATH and the
    sbin directories (blocking)."""
    path = _dockerd_path()
    return criu_probe.criu_path(path) if path is not None else criu_probe.criu_path()


def _memory_snapshot_problem(endpoint: dk.Endpoint, info: dict[str, Any]) -> str | None:
    """dk.memory_snapshot_problem with CRIU looked for and probed as the local provider probes it (its
    version, `criu check`); blocking (a PATH search, an access check, criu runs once per binary)."""
    criu = _find_criu()
    problem = dk.memory_snapshot_problem(endpoint, info, criu)
    if problem is None and criu is not None:
        problem = criu_probe.problem(criu)
    return problem


def _listing(directory: str, output: bytes) -> list[FileInfo]:
    return [FileInfo(**entry) for entry in dk.parse_listing(directory, output)]


def _drop_checkpoint(store: str, labelled: str | None) -> None:
    """Remove a memory snapshot's saved checkpoint, when it is in grainchain's store (blocking)."""
    saved = dk.owned_checkpoint(store, labelled)
    if saved is not None:
        shutil.rmtree(saved, True)


async def _resume(engine: _Engine, container_id: str, name: str, saved: str | None) -> None:
    """Start a container from its checkpoint `name` (first copied in from `saved`, when given), then drop
    the container's copy of the checkpoint."""
    checkpoint = await engine.checkpoint_path(container_id, name)
    await arun_blocking(dk.stage_checkpoint, checkpoint, saved)
    for delay in (0.2, 0.5, 1.0, 2.0, None):
        try:
            await engine.request(
                "POST",
                f"/containers/{container_id}/start",
                "restore from checkpoint",
                params={"checkpoint": name},
                timeout=_BIG_TIMEOUT,
            )
            break
        except ProviderError as exc:
            # the engine's 'already exists' race (see dk.stage_checkpoint): a fresh mark, a short wait
            if delay is None or "already exists" not in exc.message:
                raise
            await asleep(delay)
            await arun_blocking(dk.stage_checkpoint, checkpoint)
    with contextlib.suppress(GrainchainError):
        await engine.request("DELETE", f"/containers/{container_id}/checkpoints/{name}", "delete checkpoint")


async def _make_running(engine: _Engine, container_id: str, state: str) -> None:
    """Start a stopped container; unpause a paused one (a commit with pause=1 whose client died midway
    leaves it paused, and the engine refuses to start a paused container)."""
    if state == "paused":
        try:
            await engine.request("POST", f"/containers/{container_id}/unpause", "unpause container")
        except ProviderError as exc:  # the dead client's commit, still under way, ended and unpaused it
            if "is not paused" not in exc.message:
                raise
    elif state != "running":
        await engine.request("POST", f"/containers/{container_id}/start", "start container", ok=_STARTED)


async def _remove(engine: _Engine, container: str) -> None:
    """Remove a container (an id or a name) with its anonymous volumes, unless it is gone or going (a dead
    client's removal may still be under way in the engine)."""
    try:
        await engine.request(
            "DELETE", f"/containers/{container}", "remove container", params={"force": "1", "v": "1"}
        )
    except SandboxNotFoundError:
        pass
    except ProviderError as exc:
        if "already in progress" not in exc.message:
            raise


class _Watchdog:
    """Kills an exec's processes when its deadline passes, so that a silent command ends on time; an
    event wakes it early when the command ends first (a task, or a thread in the sync client)."""

    def __init__(self, adapter: AsyncDockerAdapter, marker: str, deadline: float) -> None:
        self.fired = False
        self._adapter = adapter
        self._marker = marker
        self._deadline = deadline
        self._done = AsyncEvent()
        self._task: AsyncTask = astart_task(self._watch)

    async def _watch(self) -> None:
        while not await self._done.wait(self._deadline - time.monotonic()):
            if time.monotonic() >= self._deadline:
                self.fired = True
                await self._adapter._kill_marked(self._marker)
                return

    async def stop(self) -> None:
        """Stop watching (idempotent); if it fired, wait until its kill has run."""
        if self._done.is_set():
            return
        self._done.set()
        if self.fired:
            with contextlib.suppress(Exception):
                await self._task.join()


class AsyncDockerBackend(AsyncBackend):
    """The docker provider's shared part: one Engine API client (made on first use) and what was probed."""

    def __init__(
        self,
        provider: ProviderInfo,
        adapter_class: type[AsyncSandboxAdapter],
        settings: Settings,
        options: ProviderConfig,
    ) -> None:
        super().__init__(provider, adapter_class, settings, options)
        self._engine: _Engine | None = None
        self.memory_problems: dict[Feature, str] | None = None  # what missing_features found, once

    @property
    def engine(self) -> _Engine:
        """The Engine API client (made on first use; an unreachable engine raises here)."""
        if self._engine is None:
            self._engine = _Engine()
        return self._engine

    async def open_engine(self) -> _Engine:
        """`engine`, made off the event loop on first use (the first httpx client of a process imports
        and sets up for tens of milliseconds)."""
        engine = self._engine
        if engine is None:
            made = await arun_blocking(_Engine)
            if self._engine is None:
                self._engine = made
            else:  # another task made one meanwhile
                await made.aclose()
            engine = self._engine
        return engine

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()
        await super().aclose()


def _shared(backend: AsyncBackend) -> AsyncDockerBackend:
    if not isinstance(backend, AsyncDockerBackend):
        raise TypeError(f"the docker adapter needs an AsyncDockerBackend, got {type(backend).__name__}")
    return backend


def _docker_options(options: ProviderConfig) -> DockerConfig:
    return options if isinstance(options, DockerConfig) else DockerConfig.model_validate(options.model_dump())


class AsyncDockerAdapter(AsyncSandboxAdapter):
    provider_name = "docker"
    backend_class = AsyncDockerBackend

    def __init__(
        self,
        engine: _Engine,
        container_id: str,
        sandbox_id: str,
        cwd: str,
        config: SandboxConfig,
        settings: Settings,
    ) -> None:
        super().__init__(sandbox_id, config, settings)
        self._engine = engine
        self._container = container_id
        self._cwd = cwd
        self._oom_seen = 0  # OOM kills in the container's cgroup so far (a new container starts at 0)

    # -- lifecycle ------------------------------------------------------------------------------------

    @staticmethod
    def _image_of(config: SandboxConfig, options: DockerConfig) -> str:
        image = config.image or options.image or os.environ.get("GRAINCHAIN_DOCKER_IMAGE")
        return str(image or dk.DEFAULT_IMAGE)

    @staticmethod
    def _cwd_of(config: SandboxConfig) -> str:
        # inside the workspace, as every provider: else PathOutsideSandboxError (grainchain/_checks.py)
        return start_directory(dk.WORKSPACE, config.working_directory, dk.PROVIDER)

    @classmethod
    def _container_body(
        cls, image: str, sandbox_id: str, config: SandboxConfig, options: DockerConfig, publish_ip: str
    ) -> dict[str, Any]:
        env = {**config.environment_vars, SANDBOX_MARKER: sandbox_id}
        host: dict[str, Any] = {"PidsLimit": options.pids_limit}
        if config.memory_limit is not None:
            host["Memory"] = int(config.memory_limit)
            host["MemorySwap"] = int(config.memory_limit)  # no swap: over the limit means killed
        if config.cpu_limit is not None:
            host["NanoCpus"] = int(config.cpu_limit * 1e9)
        disk_limit = dk.parse_disk_limit(options.disk_limit)
        if disk_limit is not None:  # the container's writable layer; engines that cannot, refuse (see create)
            host["StorageOpt"] = {"size": str(disk_limit)}
        if options.network is not None:
            host["NetworkMode"] = options.network
        # SandboxConfig.ports on host ports the engine picks; provider_config ports where they say
        published: dict[int, int | None] = dict.fromkeys(config.ports or []) | dict(options.ports or {})
        ports = [f"{port}/tcp" for port in published]
        if ports:
            host["PortBindings"] = {
                f"{port}/tcp": [{"HostIp": publish_ip, "HostPort": "" if on is None else str(on)}]
                for port, on in published.items()
            }
        volumes = dk.parse_volumes(options.volumes)
        if volumes.binds:
            host["Binds"] = volumes.binds
        return {
            "Image": image,
            "Entrypoint": dk.init_command(options.ttl),
            "Cmd": None,
            "ExposedPorts": {port: {} for port in ports},
            "Volumes": {path: {} for path in volumes.anonymous},
            "WorkingDir": cls._cwd_of(config),
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {
                dk.LABEL: "1",
                dk.LABEL_SANDBOX: sandbox_id,
                dk.LABEL_CONFIG: config.model_dump_json(),
            },
            "HostConfig": host,
        }

    @classmethod
    async def _ensure_image(cls, engine: _Engine, image: str) -> None:
        try:
            await engine.request("GET", f"/images/{image}/json", "inspect image")
            return
        except dk.EngineNotFoundError:
            pass
        if image.startswith(dk.SNAPSHOT_REPO + ":"):
            raise SnapshotNotFoundError(image, provider=dk.PROVIDER)
        repo, tag = dk.split_image(image)
        params = {"fromImage": repo} | ({"tag": tag} if tag else {})
        dk.log.info("pulling %s", image)
        try:
            progress = await engine.follow_progress("/images/create", f"pull {image}", params=params)
        except (ProviderError, InvalidArgumentError) as exc:  # not RemoteError: the engine itself failed
            raise dk.pull_error(image, exc.message) from exc
        if progress.error:
            raise dk.pull_error(image, progress.error)

    @classmethod
    async def _build_image(cls, engine: _Engine, config: SandboxConfig, options: DockerConfig) -> str:
        """Build provider_config's Dockerfile (once per content: the tag is a hash of the context)."""
        context, dockerfile, digest = await arun_blocking(
            dk.build_context, options.dockerfile, options.build_context
        )
        image = f"{dk.BUILD_REPO}:{digest}"
        with contextlib.suppress(dk.EngineNotFoundError):
            await engine.request("GET", f"/images/{image}/json", "inspect image")
            return image
        dk.log.info("building %s from %s (%d KiB of context)", image, dockerfile, len(context) // 1024)
        params = {"t": image, "dockerfile": dockerfile, "rm": "1", "forcerm": "1"}
        params["labels"] = json.dumps({dk.LABEL: "1"})
        progress = await engine.follow_progress(
            "/build",
            f"build {image}",
            params=params,
            content=context,
            headers={"Content-Type": "application/x-tar"},
        )
        if progress.error:
            output = "\n".join(progress.tail[-10:])
            raise ConfigurationError(
                f"building the image from {options.dockerfile or 'Dockerfile'} failed: "
                f"{progress.error}" + (f"\n--- last build output ---\n{output}" if output else ""),
                provider=dk.PROVIDER,
            )
        return image

    @classmethod
    async def _start_container(
        cls,
        engine: _Engine,
        image: str,
        sandbox_id: str,
        config: SandboxConfig,
        options: DockerConfig,
        checkpoint: tuple[str, str] | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """Create and start a container; from a saved checkpoint (name, directory) when one is given;
        `labels`: its namespace and owner (_owners.owner_labels), over what its image carries; `name`: the
        container's name (default: the sandbox id, see dk.pick_container)."""
        # off the event loop: provider_config volumes' host directories are checked
        body = await arun_blocking(
            cls._container_body, image, sandbox_id, config, options, engine.endpoint.publish_ip
        )
        body["Labels"].update(labels or {})
        try:
            created = await engine.json(
                "POST",
                "/containers/create",
                "create container",
                json=body,
                params={"name": name or sandbox_id},
            )
        except (ProviderError, InvalidArgumentError) as exc:
            await cls._explain_disk_limit(engine, options, exc)
            raise
        container_id = str(created["Id"])
        try:
            if checkpoint is None:
                await engine.request(
                    "POST", f"/containers/{container_id}/start", "start container", ok=_STARTED
                )
            else:
                await _resume(engine, container_id, *checkpoint)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await engine.request(
                    "DELETE", f"/containers/{container_id}", "remove container", params={"force": "1"}
                )
            if isinstance(exc, ProviderError | InvalidArgumentError):
                await cls._explain_disk_limit(engine, options, exc)  # drivers that refuse only at start
            raise
        return container_id

    @staticmethod
    async def _explain_disk_limit(engine: _Engine, options: DockerConfig, exc: GrainchainError) -> None:
        """Raise a ConfigurationError when the engine refused the container because it cannot enforce
        provider_config disk_limit (its storage driver or filesystem); return otherwise."""
        value = options.disk_limit
        if value is None or not dk.storage_opt_refused(exc.message):
            return
        info: dict[str, Any] = {}
        with contextlib.suppress(GrainchainError):
            info = await engine.info()
        raise dk.disk_limit_error(value, exc.message, info) from exc

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> dict[Feature, str]:
        shared = _shared(backend)
        if shared.memory_problems is not None:  # asked before every create: probed once per backend
            return shared.memory_problems
        try:
            engine = await shared.open_engine()
            info = await engine.info()
        except GrainchainError:
            return {}  # creating the sandbox will say the engine is unreachable
        problem = await arun_blocking(_memory_snapshot_problem, engine.endpoint, info)
        shared.memory_problems = {} if problem is None else {Feature.SNAPSHOT_MEMORY: problem}
        return shared.memory_problems

    @classmethod
    async def resource_bounds(
        cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig
    ) -> ResourceBounds:
        max_cpus = None
        if config.cpu_limit is not None:  # the engine's machine, which may not be this one (info: cached)
            with contextlib.suppress(GrainchainError):  # unreachable: create says so
                max_cpus = float((await (await _shared(backend).open_engine()).info())["NCPU"])
        return ResourceBounds(
            min_memory=dk.MIN_MEMORY,
            min_memory_why="the docker engine refuses less (its linuxMinMemory)",
            max_cpus=max_cpus,
            max_cpus_why=f"the docker engine's machine has {max_cpus:g} CPUs (NCPU of /info)"
            if max_cpus
            else "",
        )

    @classmethod
    async def create(cls, backend: AsyncBackend, config: SandboxConfig, options: ProviderConfig) -> Self:
        docker = _docker_options(options)
        cls._cwd_of(config)  # refused before anything is made
        engine = await _shared(backend).open_engine()
        sandbox_id = "gc-" + uuid.uuid4().hex[:16]
        try:
            if docker.dockerfile is not None or docker.build_context is not None:
                image = await cls._build_image(engine, config, docker)
            else:
                image = cls._image_of(config, docker)
            owned = _owners.owner_labels(backend.settings)  # (cleanup finds what a dead client left)
            await cls._create_named_volumes(engine, sandbox_id, docker, owned)
            try:
                container_id = await cls._start_container(
                    engine, image, sandbox_id, config, docker, None, owned
                )
            except dk.EngineNotFoundError as exc:  # the image is pulled only when it is missing
                if exc.kind == "network":
                    raise ConfigurationError(
                        f"provider_config['network']: {exc.message} (see `docker network ls`)",
                        provider=dk.PROVIDER,
                    ) from exc
                if exc.kind != "image":
                    raise
                await cls._ensure_image(engine, image)
                container_id = await cls._start_container(
                    engine, image, sandbox_id, config, docker, None, owned
                )
            return cls(engine, container_id, sandbox_id, cls._cwd_of(config), config, backend.settings)
        except BaseException:
            with contextlib.suppress(Exception):  # volumes made for a sandbox that never came to be
                await cls._remove_volumes_of(engine, sandbox_id)
            raise

    @classmethod
    async def _create_named_volumes(
        cls, engine: _Engine, sandbox_id: str, options: DockerConfig, owned: dict[str, str]
    ) -> None:
        """Create the named volumes that do not exist yet, labelled as this sandbox's (close removes them)."""
        volumes = await arun_blocking(dk.parse_volumes, options.volumes)  # host directories are checked
        for name in volumes.named:
            try:
                await engine.request("GET", f"/volumes/{name}", "inspect volume")
            except dk.EngineNotFoundError:
                labels = {dk.LABEL: "1", dk.LABEL_SANDBOX: sandbox_id, **owned}
                await engine.request(
                    "POST", "/volumes/create", "create volume", json={"Name": name, "Labels": labels}
                )

    @staticmethod
    async def _remove_volumes_of(engine: _Engine, sandbox_id: str) -> None:
        filters = json.dumps({"label": [f"{dk.LABEL_SANDBOX}={sandbox_id}"]})
        found = await engine.json("GET", "/volumes", "list volumes", params={"filters": filters})
        for volume in (found or {}).get("Volumes") or []:
            with contextlib.suppress(dk.EngineNotFoundError):
                await engine.request("DELETE", f"/volumes/{volume['Name']}", "remove volume")

    @classmethod
    async def _find(cls, engine: _Engine, sandbox_id: str | None) -> list[dict[str, Any]]:
        label = dk.LABEL_SANDBOX if sandbox_id is None else f"{dk.LABEL_SANDBOX}={sandbox_id}"
        filters = json.dumps({"label": [f"{dk.LABEL}=1", label]})
        found: list[dict[str, Any]] = await engine.json(
            "GET", "/containers/json", "list containers", params={"all": "1", "filters": filters}
        )
        return found

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        engine = await _shared(backend).open_engine()
        found = await cls._find(engine, sandbox_id)
        if not found:
            raise SandboxNotFoundError(f"no docker sandbox with id {sandbox_id!r}", provider=dk.PROVIDER)
        container = await cls._settle_swap(engine, sandbox_id, found)
        labels = container.get("Labels") or {}
        stored = (
            SandboxConfig.model_validate_json(labels[dk.LABEL_CONFIG])
            if dk.LABEL_CONFIG in labels
            else config
        )
        await _make_running(engine, str(container["Id"]), str(container.get("State")))
        adapter = cls(engine, str(container["Id"]), sandbox_id, cls._cwd_of(stored), stored, backend.settings)
        # the sandbox's own options (the facade sets them again from `stored` when it takes the adapter)
        adapter.options = parse_options(backend.provider, backend.settings, stored.provider_config)
        await arun_blocking(_owners.record_owner, backend.settings.state_dir, sandbox_id, True)  # ours now
        return adapter

    @classmethod
    async def _settle_swap(
        cls, engine: _Engine, sandbox_id: str, found: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The sandbox's container among `found` (its containers); a restore's swap that a dead client left
        between its renames is finished (or rolled back) first, and its outgoing container removed."""
        container, rename = dk.pick_container(sandbox_id, found)
        if container is None:
            raise SandboxNotFoundError(f"no docker sandbox with id {sandbox_id!r}", provider=dk.PROVIDER)
        if rename:
            await engine.request(
                "POST",
                f"/containers/{container['Id']}/rename",
                "rename container",
                params={"name": sandbox_id},
            )
        for other in found:  # an outgoing container is the old state of a swap that has been decided
            if other is not container and dk.container_name(other) == sandbox_id + dk.OUTGOING:
                await _remove(engine, str(other["Id"]))
        return container

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        found = await cls._find(await _shared(backend).open_engine(), None)
        by_sandbox: dict[str, list[dict[str, Any]]] = {}
        for c in found:
            by_sandbox.setdefault(c["Labels"][dk.LABEL_SANDBOX], []).append(c)
        # one entry per sandbox: the container that is the sandbox (a restore may have left a second)
        picked = [
            dk.pick_container(sandbox_id, containers)[0] for sandbox_id, containers in by_sandbox.items()
        ]
        found = [c for c in picked if c is not None]
        return [
            SandboxInfo(
                sandbox_id=c["Labels"][dk.LABEL_SANDBOX],
                provider=dk.PROVIDER,
                status=SandboxStatus.running if c.get("State") == "running" else SandboxStatus.closed,
                created_at=datetime.fromtimestamp(int(c.get("Created", 0)), UTC),
                metadata={"container_id": str(c["Id"]), "image": str(c.get("Image", ""))},
            )
            for c in found
            # this namespace's only (one made before namespaces: the default namespace's)
            if ownership.belongs((c.get("Labels") or {}).get(_owners.LABEL_NAMESPACE), backend.settings)
        ]

    async def _prune_deleted_snapshots(self) -> None:
        """Remove snapshot images that were deleted (untagged) while a container still used them: the engine
        keeps such an image, dangling, until it is pruned. Best effort."""
        filters = json.dumps({"dangling": ["true"], "label": [f"{dk.LABEL_SNAPSHOT}=1"]})
        with contextlib.suppress(GrainchainError):
            await self._engine.request(
                "POST", "/images/prune", "prune snapshots", params={"filters": filters}
            )

    async def aclose(self) -> None:
        try:
            await self._handles.kill_all()
            if self.config.auto_cleanup:
                # every container of the sandbox: a restore interrupted by a dead client may have left two
                containers = {self._container} | {
                    str(c["Id"]) for c in await self._find(self._engine, self.sandbox_id)
                }
                for container in containers:
                    await _remove(self._engine, container)
                await self._remove_volumes_of(self._engine, self.sandbox_id)
                await self._prune_deleted_snapshots()
                await arun_blocking(_owners.forget_owner, self.settings.state_dir, self.sandbox_id)
            else:
                with contextlib.suppress(SandboxNotFoundError):
                    await self._engine.request(
                        "POST", f"/containers/{self._container}/stop", "stop container", params={"t": "1"}
                    )
        finally:
            self.status = SandboxStatus.closed  # the engine client is the backend's: it closes it

    async def detach(self) -> None:
        self.status = SandboxStatus.running
        # nobody owns it now: `grainchain cleanup` leaves it alone (connect() takes it again)
        await arun_blocking(_owners.record_owner, self.settings.state_dir, self.sandbox_id, False)

    # -- commands -------------------------------------------------------------------------------------

    async def _exec(
        self,
        cmd: list[str],
        working_dir: str | None,
        environment: dict[str, str] | None,
        timeout: float | None,
        stdin: bool = False,
    ) -> _Exec:
        marker = uuid.uuid4().hex
        env = {**(environment or {}), SANDBOX_MARKER: self.sandbox_id, EXEC_MARKER: marker}
        body = {
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Cmd": cmd,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "WorkingDir": self._cwd if working_dir is None else dk.resolve(self._cwd, working_dir),
        }
        try:
            created = await self._engine.json(
                "POST", f"/containers/{self._container}/exec", "create exec", json=body
            )
        except ProviderError as exc:
            if "is paused" not in exc.message:
                raise
            await self._unpaused()
            created = await self._engine.json(
                "POST", f"/containers/{self._container}/exec", "create exec", json=body
            )
        exec_id = str(created["Id"])
        # with stdin the engine hijacks the connection only when asked to upgrade it (101), and reads the
        # command's stdin from it
        response = await self._engine.open_stream(
            f"/exec/{exec_id}/start",
            "start exec",
            timeout,
            ok=101 if stdin else 200,
            json={"Detach": False, "Tty": False},
            headers=dk.EXEC_STDIN_HEADERS if stdin else dk.EXEC_START_HEADERS,
        )
        return _Exec(self, exec_id, marker, response)

    async def _kill_marked(self, marker: str) -> None:
        """Kill every process of an exec (they carry its marker)."""
        code = await self._helper_exec(dk.KILL_SCRIPT, marker)
        if code == 0:
            return
        # A fork bomb holds every pid the pids limit allows, so the script cannot fork. Stop everything
        # (a builtin: no fork; the script did if it saw the limit), lend the container a few pids for the
        # script, then give the limit back and let the sandbox's other processes continue.
        dk.log.info("killing a command's processes at the sandbox's pids limit (a fork bomb?)")
        if code != dk.KILL_STOPPED_ALL:
            await self._helper_exec(dk.SIGNAL_ALL_SCRIPT, "STOP")
        limit = await self._pids_limit()
        code = None
        try:
            if limit:
                await self._set_pids_limit(limit + dk.KILL_PIDS_HEADROOM)
            code = await self._helper_exec(dk.KILL_SCRIPT, marker)
        finally:
            with contextlib.suppress(GrainchainError):
                if limit:
                    await self._set_pids_limit(limit)
                await self._helper_exec(dk.SIGNAL_ALL_SCRIPT, "CONT")
        if code != 0:
            raise ProviderError(
                f"could not kill the processes of a command in container {self._container[:12]} "
                f"(the kill script ended with {code if code is not None else 'a timeout'})",
                provider=dk.PROVIDER,
            )

    async def _helper_exec(self, script: str, *args: str) -> int | None:
        """Run a kill helper script as its own exec; its exit code (None: it did not end in time). At the
        pids limit the runtime may fail to start an exec (it forks inside the container): tried again."""
        for attempt in range(5):
            run = await self._exec(["sh", "-c", script, "sh", *args], "/", None, _KILL_TIMEOUT)
            try:
                finished = await run.pump(OutputCollector(limit=1 << 20), time.monotonic() + _KILL_TIMEOUT)
            finally:
                await run.close()
            code = await run.exit_code() if finished else None
            if code != dk.EXEC_FAILED or attempt == 4:
                return code
            await asleep(0.05)
        return None

    async def _pids_limit(self) -> int | None:
        info = await self._engine.json("GET", f"/containers/{self._container}/json", "inspect container")
        limit = (info.get("HostConfig") or {}).get("PidsLimit")
        return int(limit) if limit and int(limit) > 0 else None

    async def _set_pids_limit(self, limit: int) -> None:
        await self._engine.request(
            "POST", f"/containers/{self._container}/update", "update pids limit", json={"PidsLimit": limit}
        )

    async def _start_exec(
        self,
        cmd: list[str],
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        stdin: bool = False,
    ) -> _Exec:
        """An exec of `cmd`, watched until `deadline` when there is one (its stream's read timeout too)."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        run = await self._exec(cmd, working_dir, environment, timeout, stdin)
        if deadline is not None:
            run.watch(deadline)
        return run

    async def _check_cwd(self, working_dir: str | None) -> None:
        if working_dir is not None:
            path = dk.resolve(self._cwd, working_dir)
            stat = await self._stat(path)
            if stat is None or not stat.is_directory:
                raise FileNotFoundInSandboxError(path, provider=dk.PROVIDER)

    async def _launch(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        *,
        stdin: bool = False,
    ) -> _Exec:
        await self._check_cwd(working_dir)
        return await self._start_exec(["/bin/sh", "-c", command], working_dir, environment, deadline, stdin)

    async def _oom_baseline(self) -> int | None:
        return None if self.config.memory_limit is None else self._oom_seen

    async def _oom_killed_since(self, baseline: int) -> bool:
        """Whether the kernel OOM-killed a process of the container since `baseline` (the count last
        looked at: asked only after a command failed, so that successful commands pay nothing)."""
        _, out = await self._script(dk.OOM_SCRIPT)
        self._oom_seen = dk.oom_kills(out.decode(errors="replace"))
        return self._oom_seen > baseline

    async def _script(self, script: str, *args: str) -> tuple[int, bytes]:
        """Run a helper script (args as $1 …, never through a shell's parser); exit code and raw stdout."""
        output = OutputCollector(limit=1 << 30)
        started = time.monotonic()
        run = await self._start_exec(["sh", "-c", script, "sh", *args], "/", None, started + dk.API_TIMEOUT)
        result = await run_to_completion(run, "helper", output, dk.API_TIMEOUT, started)
        return result.return_code, output._bytes(Stream.STDOUT)

    async def _unpaused(self) -> None:
        """Wait until a commit that paused the container (a snapshot by another client, or by a dead one
        whose request the engine still carries out) has unpaused it; if it stays paused, the commit's
        client died and left it so: unpause it."""
        deadline = time.monotonic() + _UNPAUSE_WAIT
        while time.monotonic() < deadline:
            inspected = await self._engine.json("GET", f"/containers/{self._container}/json", "inspect")
            if not (inspected.get("State") or {}).get("Paused"):
                return
            await asleep(0.05)
        await _make_running(self._engine, self._container, "paused")

    # -- files ----------------------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return dk.resolve(self._cwd, path)

    async def _stat(self, path: str) -> dk.PathStat | None:
        try:
            response = await self._engine.request(
                "HEAD", f"/containers/{self._container}/archive", "stat path", params={"path": path}
            )
        except dk.EngineNotFoundError:  # a HEAD's 404 has no body: the path, or the whole container?
            await self._container_exists()
            return None
        header = response.headers.get("X-Docker-Container-Path-Stat")
        return dk.parse_path_stat(header) if header else None

    async def _container_exists(self) -> None:
        await self._engine.request("GET", f"/containers/{self._container}/json", "inspect container")

    async def _follow(self, target: str) -> tuple[str, dk.PathStat | None]:
        """Where `target` leads when its last component's symlinks are followed (as opening it does), with
        its stat (None: nothing there)."""
        for _ in range(40):
            stat = await self._stat(target)
            if stat is None or not stat.is_symlink:
                return target, stat
            target = dk.resolve(posixpath.dirname(target), stat.link_target)
        raise InvalidArgumentError(
            f"too many levels of symbolic links at {target}", argument="path", provider=dk.PROVIDER
        )

    async def _put(self, directory: str, name: str, data: bytes, permissions: int = 0o644) -> None:
        size, pieces = dk.tar_one_file(name, data, permissions)
        # small: one buffer, which httpx sends in one write (see _replace); big: streamed, in pieces
        body = b"".join(pieces) if size <= _INLINE_BYTES else _body(pieces)
        try:
            await self._engine.request(
                "PUT",
                f"/containers/{self._container}/archive",
                "upload file",
                params={"path": directory},
                content=body,
                headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
                timeout=_BIG_TIMEOUT,
            )
        except dk.EngineForbiddenError as exc:  # a read-only root file system or volume
            raise PermissionDeniedError(
                posixpath.join(directory, name), exc.said, provider=dk.PROVIDER
            ) from exc
        except dk.EngineNotFoundError as exc:  # gone meanwhile, or where the archive API does not reach
            if exc.kind != "path":
                raise
            await self._writable(directory, exc)
            raise FileNotFoundInSandboxError(directory, provider=dk.PROVIDER) from exc

    async def _writable(self, directory: str, cause: Exception) -> None:
        """After the archive API found no `directory`: PermissionDeniedError where a command may not write in
        it either (/proc/sys...), a ProviderError where a command may (a runtime mount such as /dev/shm:
        the engine's archive API cannot write there); returns when commands see no directory there."""
        code, _ = await self._script(dk.WRITABLE_SCRIPT, directory)
        if code == dk.REFUSED:
            raise PermissionDeniedError(
                directory, "commands may not write in this directory either", provider=dk.PROVIDER
            ) from cause
        if code == 0:
            raise ProviderError(
                f"the docker engine's archive API cannot write in {directory} (a mount of the container "
                "runtime, not of the container's file system); write it with a command",
                provider=dk.PROVIDER,
            ) from cause

    async def _replace(self, directory: str, name: str, data: bytes, permissions: int) -> None:
        """Write directory/name atomically: a big archive goes to a hidden file beside it, which is then
        renamed over it, so that a client killed midway leaves the old content or the new, never neither
        (the engine's archive upload removes the file it replaces before writing the new one)."""
        if dk.tar_one_file(name, data, permissions)[0] <= _INLINE_BYTES:  # (the measure _put goes by)
            # A small archive goes in one write, which the socket takes whole: a client killed after it
            # leaves the engine the whole archive, and one killed before, none (an exec saved: ~90 ms).
            await self._put(directory, name, data, permissions)
            return
        temporary = posixpath.join(directory, f"{dk.UPLOAD_PREFIX}{uuid.uuid4().hex}")
        target = posixpath.join(directory, name)
        try:
            await self._put(directory, posixpath.basename(temporary), data, permissions)
            code, _ = await self._script(dk.REPLACE_SCRIPT, temporary, target)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._script(dk.DELETE_SCRIPT, temporary)
            raise
        if code == dk.IS_A_DIRECTORY:
            raise InvalidArgumentError(f"{target} is a directory", argument="path", provider=dk.PROVIDER)
        if code != 0:
            raise ProviderError(
                f"renaming the upload into {target} failed (exit {code})", provider=dk.PROVIDER
            )

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        # a symlink is followed, as writing into it would: the file it leads to gets the content
        target, stat = await self._follow(self._path(path))
        data = self.content_bytes(content)
        if stat is not None and stat.is_directory:
            raise InvalidArgumentError(f"{target} is a directory", argument="path", provider=dk.PROVIDER)
        if mode.startswith("a") and stat is not None:
            data = await self.download_file(target) + data
        directory, name = posixpath.split(target)
        if stat is None:
            directory, parent = await self._follow(directory)  # a link to a directory leads into it
            if parent is None:
                await self.make_directory(directory)
            elif not parent.is_directory:
                raise InvalidArgumentError(
                    f"{directory} is not a directory", argument="path", provider=dk.PROVIDER
                )
        # a new file replaces the old one: give it the mode that writing into the old one would have kept
        permissions = stat.permissions if stat is not None else 0o644
        await self._replace(directory, name, data, permissions)

    async def download_file(self, path: str) -> bytes:
        target, stat = await self._follow(self._path(path))
        if stat is None and dk.under_runtime_mount(target):  # the archive API does not see these
            code, out = await self._script(dk.READ_SCRIPT, target)
            if code == 0:
                return out
            if code == dk.IS_A_DIRECTORY:
                raise InvalidArgumentError(
                    f"{target} is not a regular file", argument="path", provider=dk.PROVIDER
                )
        if stat is None:
            raise FileNotFoundInSandboxError(target, provider=dk.PROVIDER)
        if stat.is_directory:
            raise InvalidArgumentError(f"{target} is a directory", argument="path", provider=dk.PROVIDER)
        try:
            response = await self._engine.open_stream(
                f"/containers/{self._container}/archive",
                "download file",
                _BIG_TIMEOUT,
                method="GET",
                params={"path": target},
                # the engine gzips archives for clients that accept it: CPU on both sides for nothing here
                headers={"Accept-Encoding": "identity"},
            )
        except dk.EngineNotFoundError as exc:  # deleted since the stat
            if exc.kind != "path":
                raise
            raise FileNotFoundInSandboxError(target, provider=dk.PROVIDER) from exc
        reader = dk.FirstFileReader()  # the archive is read as it arrives: no second copy of it
        try:
            async for chunk in response.aiter_bytes():
                reader.feed(chunk)
                if reader.regular is False:
                    break
        except httpx.HTTPError as exc:
            raise dk.transport_error(self._engine.endpoint, "download file", exc) from exc
        finally:
            await response.aclose()
        data = reader.content()
        if data is None:
            raise InvalidArgumentError(
                f"{target} is not a regular file", argument="path", provider=dk.PROVIDER
            )
        return data

    # Directories: the engine's archive endpoints stream the tar both ways (grainchain/_tree.py packs and
    # unpacks it on the client's side); an upload goes to a hidden directory beside the target, renamed
    # onto it at the end (all or nothing), as a big upload_file does.

    async def upload_directory(self, local_path: LocalPath, sandbox_path: str) -> None:
        source = await arun_blocking(_tree.local_source, local_path, "upload_directory")
        try:
            target, stat = await self._follow(self._path(sandbox_path))  # a link to a directory leads in
            if stat is not None:
                code, _ = await self._script(dk.EMPTY_DIRECTORY_SCRIPT, target)
                if code != 0:
                    raise _not_free(target, code)
            parent = posixpath.dirname(target)
            await self.make_directory(parent)
            hidden = posixpath.join(parent, f"{dk.UPLOAD_PREFIX}{uuid.uuid4().hex}")
            await self.make_directory(hidden)
            progress = _tree.Progress(f"upload_directory {target}")
            try:
                await self._engine.request(
                    "PUT",
                    f"/containers/{self._container}/archive",
                    "upload directory",
                    params={"path": hidden},
                    content=_pieces(_tree.pack(source, progress=progress)),
                    headers={"Content-Type": "application/x-tar"},
                    timeout=_BIG_TIMEOUT,
                )
                code, _ = await self._script(dk.MOVE_DIRECTORY_SCRIPT, hidden, target)
                if code != 0:
                    raise _not_free(target, code)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._script(dk.DELETE_SCRIPT, hidden)
                raise
            progress.done()
        finally:
            os.close(source)

    async def download_directory(self, sandbox_path: str, local_path: LocalPath) -> None:
        target = await arun_blocking(_tree.local_target, local_path, "download_directory")
        source, stat = await self._follow(self._path(sandbox_path))
        if stat is None:
            raise FileNotFoundInSandboxError(source, provider=dk.PROVIDER)
        if not stat.is_directory:
            raise InvalidArgumentError(
                f"{source} is not a directory", argument="sandbox_path", provider=dk.PROVIDER
            )
        progress = _tree.Progress(f"download_directory {source}")
        # the archive is spooled to a file beside the target (flat memory; the async client cannot hand an
        # HTTP stream to tarfile's blocking reads), then unpacked with tarfile's filters
        spool = await arun_blocking(_tree.spool_beside, target)
        try:
            try:
                response = await self._engine.open_stream(
                    f"/containers/{self._container}/archive",
                    "download directory",
                    _BIG_TIMEOUT,
                    method="GET",
                    params={"path": source.rstrip("/") + "/."},  # `./name` members, not `dir/name`
                    headers={"Accept-Encoding": "identity"},
                )
            except dk.EngineNotFoundError as exc:  # deleted since the stat
                if exc.kind != "path":
                    raise
                raise FileNotFoundInSandboxError(source, provider=dk.PROVIDER) from exc
            try:
                async for chunk in response.aiter_bytes(_tree.CHUNK):
                    progress.add(len(chunk))
                    await arun_blocking(spool.write, chunk)
            except httpx.HTTPError as exc:
                raise dk.transport_error(self._engine.endpoint, "download directory", exc) from exc
            finally:
                await response.aclose()
            await arun_blocking(spool.seek, 0)
            await arun_blocking(_tree.extract, spool, target, "download_directory")
        finally:
            await arun_blocking(spool.close)
        progress.done()

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        target = self._path(path)
        code, out = await self._script(dk.LIST_SCRIPT, target)
        if code == dk.MISSING:
            stat = await self._stat(target)
            if stat is None:
                raise FileNotFoundInSandboxError(target, provider=dk.PROVIDER)
            raise InvalidArgumentError(f"{target} is not a directory", argument="path", provider=dk.PROVIDER)
        if code != 0:
            raise ProviderError(f"listing {target} failed (exit {code})", provider=dk.PROVIDER)
        return await _sized(len(out), _listing, target, out)

    async def get_file_info(self, path: str) -> FileInfo:
        target = self._path(path)
        code, out = await self._script(dk.STAT_SCRIPT, target)
        if code == dk.MISSING:
            raise FileNotFoundInSandboxError(target, provider=dk.PROVIDER)
        if code != 0:
            raise ProviderError(f"stat of {target} failed (exit {code})", provider=dk.PROVIDER)
        return FileInfo(**dk.file_info_from_stat(target, out.decode()))

    async def file_exists(self, path: str) -> bool:
        target = self._path(path)
        if await self._stat(target) is not None:
            return True
        if dk.under_runtime_mount(target):  # the archive API does not see these: ask a command
            return (await self._script(dk.EXISTS_SCRIPT, target))[0] == 0
        return False

    async def delete_file(self, path: str) -> None:
        target = self._path(path)
        if target == "/":
            raise InvalidArgumentError("refusing to delete /", argument="path", provider=dk.PROVIDER)
        code, out = await self._script(dk.DELETE_SCRIPT, target)
        if code == dk.MISSING:
            raise FileNotFoundInSandboxError(target, provider=dk.PROVIDER)
        if code == dk.REFUSED:  # rm -rf failed: the sandbox refuses it, as it refuses a command
            said = out.decode(errors="replace").strip() or "rm -rf failed"
            raise PermissionDeniedError(target, said, provider=dk.PROVIDER)
        if code != 0:
            raise ProviderError(f"deleting {target} failed (exit {code})", provider=dk.PROVIDER)

    async def make_directory(self, path: str) -> None:
        target = self._path(path)
        code, _ = await self._script(dk.MKDIR_SCRIPT, target)
        if code == dk.REFUSED:
            raise PermissionDeniedError(
                target, "the sandbox refuses a command this directory too", provider=dk.PROVIDER
            )
        if code != 0:
            raise InvalidArgumentError(
                f"cannot create directory {target} (a file is in the way)",
                argument="path",
                provider=dk.PROVIDER,
            )

    # -- snapshots ------------------------------------------------------------------------------------

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        tag = uuid.uuid4().hex[:20]
        labels = {
            dk.LABEL: "1",
            dk.LABEL_SNAPSHOT: "1",
            dk.LABEL_SOURCE: self.sandbox_id,
            dk.LABEL_KIND: kind.value,
            # always written: a commit inherits the image's labels, and an image may carry any
            dk.LABEL_CHECKPOINT: "",
            **_owners.snapshot_labels(self.settings),  # namespace, expiry
        }
        if kind is SnapshotKind.filesystem:
            await self._commit(tag, labels, pause=True)
            return f"{dk.SNAPSHOT_REPO}:{tag}"
        attached = self._handles.running()
        if attached:
            raise ProviderError(
                f"a memory snapshot cannot hold processes started with start_process() ({len(attached)} "
                "running): their output streams to this client and cannot be checkpointed; wait for or kill "
                "them, and start work that must survive as `execute('cmd > log 2>&1 &')`",
                provider=dk.PROVIDER,
                retryable=False,
            )
        name = "gc-" + tag
        saved = str(self._checkpoint_store() / tag)
        labels[dk.LABEL_CHECKPOINT] = saved
        # The container stops for the checkpoint, so the commit captures the files the memory refers to.
        await self._engine.request(
            "POST",
            f"/containers/{self._container}/checkpoints",
            "checkpoint (CRIU)",
            json={"CheckpointID": name, "Exit": True},
            timeout=_BIG_TIMEOUT,
        )
        try:
            checkpoint = await self._engine.checkpoint_path(self._container, name)
            await arun_blocking(dk.save_checkpoint, checkpoint, saved)
            await self._commit(tag, labels, pause=False)
        except BaseException:
            await arun_blocking(shutil.rmtree, saved, True)
            raise
        finally:
            await self._continue_after_checkpoint(name)
        return f"{dk.SNAPSHOT_REPO}:{tag}"

    def _checkpoint_store(self) -> Path:
        return self.settings.state_dir / "docker" / "checkpoints"

    async def _running_processes(self) -> list[str]:
        """The container's processes but its main one (the waiting shell, dk.INIT_COMMAND) and the sleep it
        waits on, from the engine's `top` (the host's ps: nothing runs in the container to ask); host pids."""
        info = await self._engine.json("GET", f"/containers/{self._container}/json", "inspect container")
        main = str((info.get("State") or {}).get("Pid") or "")
        top = await self._engine.json(
            "GET",
            f"/containers/{self._container}/top",
            "list processes",
            params={"ps_args": "-o pid,ppid,stat,args"},
        )
        found = []
        for row in (top or {}).get("Processes") or []:
            pid, ppid, stat, args = [*row, "", "", "", ""][:4]
            ours = pid == main or (ppid == main and args == "sleep 2147483647")
            if not ours and not stat.startswith(("Z", "X")):
                found.append(f"pid {pid}: {args}")
        return found

    async def _commit(self, tag: str, labels: dict[str, str], pause: bool) -> None:
        await self._engine.request(
            "POST",
            "/commit",
            "commit snapshot",
            params={
                "container": self._container,
                "repo": dk.SNAPSHOT_REPO,
                "tag": tag,
                "pause": "1" if pause else "0",
            },
            json={"Labels": labels},
            timeout=_BIG_TIMEOUT,
        )

    async def _continue_after_checkpoint(self, name: str) -> None:
        """Resume the container from its checkpoint; if that fails, start it afresh (its processes are
        lost) so that the sandbox stays usable, and say so."""
        try:
            await _resume(self._engine, self._container, name, None)
        except GrainchainError as exc:
            with contextlib.suppress(GrainchainError):
                await self._engine.request(
                    "POST", f"/containers/{self._container}/start", "start container", ok=_STARTED
                )
            raise ProviderError(
                f"the sandbox's processes could not be resumed after the checkpoint ({exc.message}); "
                "the container was restarted without them",
                provider=dk.PROVIDER,
            ) from exc

    async def _snapshot_image(self, snapshot_id: str) -> dict[str, str]:
        """The labels of a snapshot's image (SnapshotNotFoundError when it is not one of ours)."""
        repo, _, tag = snapshot_id.rpartition(":")
        if repo != dk.SNAPSHOT_REPO or not dk.SNAPSHOT_TAG.fullmatch(tag):  # the tag names a checkpoint
            raise SnapshotNotFoundError(snapshot_id, provider=dk.PROVIDER)
        try:
            image: dict[str, Any] = await self._engine.json(
                "GET", f"/images/{snapshot_id}/json", "inspect snapshot"
            )
        except dk.EngineNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, provider=dk.PROVIDER) from None
        labels: dict[str, str] = (image.get("Config") or {}).get("Labels") or {}
        if labels.get(dk.LABEL_SNAPSHOT) != "1":
            raise SnapshotNotFoundError(snapshot_id, provider=dk.PROVIDER)
        return labels

    def _memory_problem(self) -> str | None:
        """Why this engine cannot restore memory snapshots (missing_features found it), or None."""
        problems = self.backend.memory_problems if isinstance(self.backend, AsyncDockerBackend) else None
        return (problems or {}).get(Feature.SNAPSHOT_MEMORY)

    def _saved_checkpoint(self, snapshot_id: str, labels: dict[str, str]) -> tuple[str, str] | None:
        """(checkpoint name, saved directory) of a memory snapshot; None for a filesystem snapshot. Only a
        directory in grainchain's checkpoint store is ever copied into a container (dk.owned_checkpoint)."""
        if labels.get(dk.LABEL_KIND) != SnapshotKind.memory.value:
            return None
        store = str(self._checkpoint_store())
        labelled = labels.get(dk.LABEL_CHECKPOINT)
        saved = dk.owned_checkpoint(store, labelled)
        if saved is None:
            raise SnapshotNotFoundError(
                f"{snapshot_id} (its memory checkpoint {labelled!r} is not in this grainchain's checkpoint "
                f"directory {store}: was it made with another GRAINCHAIN_STATE_DIR?)",
                provider=dk.PROVIDER,
            )
        if not os.path.isdir(saved):
            raise SnapshotNotFoundError(
                f"{snapshot_id} (its memory checkpoint {saved} is gone)", provider=dk.PROVIDER
            )
        return "gc-" + snapshot_id.rpartition(":")[2], saved

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        labels = await self._snapshot_image(snapshot_id)  # an unknown id fails before anything is touched
        # the gate lets restore_snapshot by with either snapshot kind: a memory snapshot needs CRIU here too
        if labels.get(dk.LABEL_KIND) == SnapshotKind.memory.value and (reason := self._memory_problem()):
            raise CapabilityError(
                Feature.SNAPSHOT_MEMORY.value, self.provider_name, operation="restore_snapshot", hint=reason
            )
        checkpoint = await arun_blocking(self._saved_checkpoint, snapshot_id, labels)  # realpath, isdir
        await self._handles.kill_all()
        # The new container replaces the old by renames (dk.pick_container): at every point a dead client
        # leaves one container that is the sandbox. First, what a swap that died before its renames left.
        incoming, outgoing = self.sandbox_id + dk.INCOMING, self.sandbox_id + dk.OUTGOING
        await self._remove_container(incoming)
        new = await self._start_container(
            self._engine,
            snapshot_id,
            self.sandbox_id,
            self.config,
            _docker_options(self.options),
            checkpoint,
            _owners.owner_labels(self.settings),  # (else the snapshot's, inherited: its maker's)
            name=incoming,
        )
        old = self._container
        try:
            await self._rename(old, outgoing)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove_container(new)
            raise
        try:
            await self._rename(new, self.sandbox_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the old one is the sandbox again
                await self._rename(old, self.sandbox_id)
                await self._remove_container(new)
            raise
        self._container = new
        self._oom_seen = 0
        await self._remove_container(old)
        await self._prune_deleted_snapshots()

    async def _rename(self, container: str, name: str) -> None:
        await self._engine.request(
            "POST", f"/containers/{container}/rename", "rename container", params={"name": name}
        )

    async def _remove_container(self, container: str) -> None:
        await _remove(self._engine, container)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        filters = json.dumps({"label": [f"{dk.LABEL_SNAPSHOT}=1"]})
        images = await self._engine.json("GET", "/images/json", "list snapshots", params={"filters": filters})
        snapshots = []
        for image in images:
            labels = image.get("Labels") or {}
            if not ownership.belongs(labels.get(_owners.LABEL_NAMESPACE), self.settings):
                continue  # another namespace's (one made before namespaces: the default namespace's)
            for ref in image.get("RepoTags") or []:
                if ref.startswith(dk.SNAPSHOT_REPO + ":"):
                    snapshots.append(
                        SnapshotInfo(
                            snapshot_id=ref,
                            provider=dk.PROVIDER,
                            kind=SnapshotKind(labels.get(dk.LABEL_KIND, SnapshotKind.filesystem.value)),
                            created_at=dk.image_created(image.get("Created", 0)),
                            source_sandbox_id=labels.get(dk.LABEL_SOURCE),
                            size_bytes=image.get("Size"),
                        )
                    )
        return snapshots

    async def delete_snapshot(self, snapshot_id: str) -> None:
        labels = await self._snapshot_image(snapshot_id)
        if not ownership.belongs(labels.get(_owners.LABEL_NAMESPACE), self.settings):
            raise SnapshotNotFoundError(snapshot_id, provider=dk.PROVIDER)  # another namespace's
        try:
            await self._engine.request(
                "DELETE", f"/images/{snapshot_id}", "delete snapshot", params={"force": "1"}
            )
        except dk.EngineNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, provider=dk.PROVIDER) from None
        if labels.get(dk.LABEL_KIND) == SnapshotKind.memory.value:
            store = str(self._checkpoint_store())
            await arun_blocking(_drop_checkpoint, store, labels.get(dk.LABEL_CHECKPOINT))
        await self._prune_deleted_snapshots()

    # -- terminate / wake up --------------------------------------------------------------------------

    async def terminate(self) -> None:
        await self._handles.kill_all()
        await self._engine.request(
            "POST", f"/containers/{self._container}/stop", "stop container", params={"t": "5"}, timeout=30
        )
        self.status = SandboxStatus.terminated

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        if snapshot_id is not None:
            await self.restore_snapshot(snapshot_id)
        elif self.status is SandboxStatus.terminated:
            info = await self._engine.json("GET", f"/containers/{self._container}/json", "inspect container")
            await _make_running(self._engine, self._container, str((info.get("State") or {}).get("Status")))
        self.status = SandboxStatus.running

    # -- ports ----------------------------------------------------------------------------------------

    async def port_address(self, port: int) -> str:
        if port not in (self.config.ports or []):
            raise InvalidArgumentError(
                f"port {port} is not in SandboxConfig.ports ({self.config.ports or []}); ports are "
                "published when the sandbox is created",
                argument="port",
                provider=dk.PROVIDER,
            )
        info = await self._engine.json("GET", f"/containers/{self._container}/json", "inspect container")
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
        if not bindings:
            raise ProviderError(
                f"the engine published no host port for {port}/tcp (is the container running?)",
                provider=dk.PROVIDER,
            )
        host = self._engine.endpoint.remote_host or str(bindings[0].get("HostIp") or "127.0.0.1")
        return f"{host}:{bindings[0]['HostPort']}"
