"""The fake's state: apps, images, sandboxes (directories on this machine and the processes running in them)
and the commands run in them, with the lifecycle operations both services need.

Everything here runs on the fake's event loop thread; `Cloud.live` is also read from the test thread.

A sandbox's root file system is an overlay: the host's `/` read-only below, the sandbox's `upper` directory
above (where every write lands), `/tmp` its own `tmp` directory. Each command is its own bubblewrap (see
`tests/providers/_fakebox.py`) mounting that overlay; the processes of a sandbox are those that see its
`tmp` directory at `/tmp`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modal_proto import api_pb2

from tests.providers._fakebox import (
    PATH_ENV,
    WRAPPER_PYTHON,
    Command,
    Ended,
    NoWorkdir,
    StartError,
    Stream,
    copy_tree,
    covers_loopback,
    find_bwrap,
    pids_seeing,
    reap,
    signal_all,
)

BWRAP = find_bwrap(overlay=True)
FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"  # where the SDK's file API runs its helper
FS_TOOLS_SOURCE = Path(__file__).with_name("_fs_tools.py")
CHUNK = 256 * 1024  # largest piece of output in one message
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
Result = api_pb2.GenericResult


DEFAULT_ENVIRONMENT = "main"


def new_id(prefix: str) -> str:
    """`sb-` + 26 ULID characters, as V2 ids look: the SDK routes anything that is not `sb-` + 22
    characters to the V2 sandbox API."""
    return prefix + "".join(secrets.choice(ULID_ALPHABET) for _ in range(26))


class CloudError(Exception):
    """An error answer (a gRPC status name and a message), raised where the fake refuses."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class Image:
    """An image: its files, the env and workdir its sandboxes start with, and its last build (a snapshot's
    image is built when made). Its files never change once built, so images may share them."""

    id: str
    files: Path | None = None  # `upper` and `tmp` of a build or snapshot; None: the host's files only
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    result: Result | None = None  # of the last build, once it has ended; SUCCESS: sandboxes may use it
    logs: list[api_pb2.TaskLogs] = field(default_factory=list)  # of the last build, kept for late joiners
    _grown: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.result is not None and self.result.status == Result.GENERIC_STATUS_SUCCESS

    def log(self, fd: api_pb2.FileDescriptor.ValueType, data: str) -> None:
        self.logs.append(api_pb2.TaskLogs(data=data, file_descriptor=fd, timestamp=time.time()))
        self._wake()

    def restart(self) -> None:
        """A new build starts: the last one's logs and result are gone."""
        self.logs, self.result = [], None
        self._wake()

    def end(self, result: Result) -> None:
        self.result = result
        self._wake()

    def _wake(self) -> None:
        self._grown.set()
        self._grown = asyncio.Event()

    async def follow(self, offset: int, timeout: float) -> AsyncIterator[tuple[int, api_pb2.TaskLogs]]:
        """The build's logs from `offset` on (with the offset after each), as they come, until the build
        has ended or `timeout` seconds passed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if offset < len(self.logs):
                offset += 1
                yield offset, self.logs[offset - 1]
            elif self.result is not None:
                return
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._grown.wait(), remaining)


@dataclass(eq=False)
class Exec:
    """One command of a sandbox (or its entrypoint): all of its output is kept, so a reader may start (or
    start again) at any offset."""

    id: str
    sandbox: Sandbox
    pipe_stdout: bool = True
    pipe_stderr: bool = True
    output: dict[Stream, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    stdin_written: int = 0
    stdin_closed: bool = False
    ended: Ended | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    command: Command | None = None
    _grown: asyncio.Event = field(default_factory=asyncio.Event)

    def _on_output(self, name: Stream, data: bytes) -> None:
        self.output[name] += data
        self._wake()

    def _on_end(self, ended: Ended) -> None:
        self.ended = ended
        self.stdin_closed = True
        self.done.set()
        self._wake()
        self.sandbox.on_exec_end(self)

    def _wake(self) -> None:
        self._grown.set()
        self._grown = asyncio.Event()

    async def start(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float | None) -> None:
        self.command = Command(self._on_output, self._on_end)
        await self.command.start(
            self.sandbox.bwrap_argv(),
            argv,
            env,
            popens=self.sandbox.popens,
            stdin=True,
            stdout=self.pipe_stdout,
            stderr=self.pipe_stderr,
            cwd=cwd,
            timeout=timeout,
        )

    async def read(self, name: Stream, offset: int) -> AsyncIterator[bytes]:
        """The output from `offset` on, as it comes, until the command has ended."""
        while True:
            kept = self.output[name]
            if offset < len(kept):
                chunk = bytes(kept[offset : offset + CHUNK])
                offset += len(chunk)
                yield chunk
            elif self.ended is not None:
                return
            else:
                await self._grown.wait()

    async def write_stdin(self, offset: int, data: bytes, eof: bool) -> None:
        """Write what of `data` (which starts at byte `offset` of the whole input) is new; a write the
        command can no longer take is FAILED_PRECONDITION, as Modal answers a write to an ended command."""
        if offset > self.stdin_written:
            raise CloudError("FAILED_PRECONDITION", f"stdin offset {offset} is past {self.stdin_written}")
        new = data[self.stdin_written - offset :]
        if new:
            if self.stdin_closed or self.command is None:
                raise CloudError("FAILED_PRECONDITION", f"stdin of exec {self.id} is closed")
            try:
                await self.command.write_stdin(new)
            except OSError as e:
                raise CloudError("FAILED_PRECONDITION", f"stdin of exec {self.id} is closed: {e}") from None
            self.stdin_written += len(new)
        if eof:
            self.stdin_closed = True
            if self.command is not None:
                self.command.close_stdin()


@dataclass(eq=False)
class Sandbox:
    id: str
    task_id: str
    app_id: str
    definition: api_pb2.Sandbox
    env: dict[str, str]
    tags: dict[str, str]
    dir: Path
    created_at: float
    result: Result | None = None  # set once the sandbox has ended
    execs: dict[str, Exec] = field(default_factory=dict)
    main: Exec | None = None  # the entrypoint
    popens: set[subprocess.Popen[bytes]] = field(default_factory=set)  # bubblewrap, until waited for
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0
    timer: asyncio.TimerHandle | None = None
    idle_timer: asyncio.TimerHandle | None = None
    image: Image | None = None
    cloud: Cloud = field(init=False)

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    @property
    def internet(self) -> bool:
        """Whether commands share the host's network: not when blocked, nor when an allow-list does not
        cover the host's loopback (the fake's only reachable network)."""
        access = self.definition.network_access
        if access.network_access_type == api_pb2.NetworkAccess.BLOCKED or self.definition.block_network:
            return False
        if access.network_access_type == api_pb2.NetworkAccess.ALLOWLIST:
            return any(covers_loopback(cidr) for cidr in access.allowed_cidrs)
        return True

    @property
    def workdir(self) -> str:
        """The sandbox's own, else its image's (WORKDIR), else `/`."""
        if self.definition.HasField("workdir"):
            return self.definition.workdir
        return (self.image.workdir if self.image is not None else None) or "/"

    def bwrap_argv(self) -> list[str]:
        return [
            BWRAP,
            "--overlay-src", "/", "--overlay", str(self.upper), str(self.dir / "work"), "/",
            "--dev", "/dev", "--proc", "/proc", "--bind", str(self.tmp), "/tmp",
            *(["--unshare-net"] if not self.internet else []),
            # bubblewrap run by root keeps root's capabilities (mount, ptrace...) unless told otherwise
            "--cap-drop", "ALL",
            "--die-with-parent", "--new-session",
        ]  # fmt: skip

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": PATH_ENV,
            "HOME": "/root",
            **(self.image.env if self.image is not None else {}),  # (the image's ENV)
            "MODAL_TASK_ID": self.task_id,
            "MODAL_SANDBOX_ID": self.id,
            **self.env,
        }

    def pids(self) -> list[int]:
        return pids_seeing(self.tmp, "/tmp")

    def on_exec_end(self, run: Exec) -> None:
        if run is self.main and self.result is None:
            ended = run.ended or Ended(signal=signal.SIGKILL)
            if ended.code == 0:
                result = Result(status=Result.GENERIC_STATUS_SUCCESS)
            else:
                code = ended.code if ended.code is not None else 128 + (ended.signal or 0)
                result = Result(status=Result.GENERIC_STATUS_FAILURE, exitcode=code, exception=f"exit {code}")
            self.cloud.spawn(self.cloud.finish(self, result))
        else:
            self.cloud.touch(self)


def lay_out(box: Sandbox, image: Image) -> None:
    """Make a sandbox's (or a build's) directories and put its image's files in them."""
    for name in ("upper", "work", "tmp"):
        (box.dir / name).mkdir(parents=True)
    box.tmp.chmod(0o1777)
    # root's home starts empty, as in a fresh container, not as the host's (an opaque directory of the
    # overlay hides what is below it)
    (box.upper / "root").mkdir(mode=0o700)
    os.setxattr(box.upper / "root", "user.overlay.opaque", b"y")  # (bubblewrap mounts with userxattr)
    if image.files is not None:
        copy_tree(image.files / "upper", box.upper)
        copy_tree(image.files / "tmp", box.tmp)
    if box.workdir != "/" and not os.path.isdir(box.workdir):  # (a container runtime makes its cwd)
        (box.upper / box.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)


class Cloud:
    """The control plane's and the routers' state and operations. Methods run on the event loop."""

    def __init__(self, root: Path, router_url: str) -> None:
        self.root = root
        self.router_url = router_url
        self.apps: dict[tuple[str, str], str] = {}  # (environment, name) -> app id
        self.images: dict[str, Image] = {}
        self.image_keys: dict[bytes, str] = {}  # an image definition -> its id
        self.sandboxes: dict[str, Sandbox] = {}  # every sandbox, ended ones too
        self.tasks: dict[str, Sandbox] = {}
        self.builds: list[str] = []  # the image of every build started, in order
        self.building: set[Sandbox] = set()  # where builds run their commands (not sandboxes of users)
        self.closing = False
        self._lock = threading.Lock()  # guards `sandboxes` for readers on other threads
        self._tasks: set[asyncio.Task[None]] = set()
        (root / "sandboxes").mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(parents=True, exist_ok=True)

    # -- queries

    def live(self) -> dict[str, Sandbox]:
        with self._lock:
            return {sid: box for sid, box in self.sandboxes.items() if box.result is None}

    def get(self, sandbox_id: str) -> Sandbox:
        box = self.sandboxes.get(sandbox_id)
        if box is None:
            raise CloudError("NOT_FOUND", f"Sandbox {sandbox_id} not found")
        return box

    def task(self, task_id: str) -> Sandbox:
        """A running sandbox by its task, as the task's command router knows it (gone once it ended)."""
        box = self.tasks.get(task_id)
        if box is None or box.result is not None:
            raise CloudError("NOT_FOUND", f"task {task_id} not found")
        return box

    def exec(self, task_id: str, exec_id: str) -> Exec:
        run = self.task(task_id).execs.get(exec_id)
        if run is None:
            raise CloudError("NOT_FOUND", f"exec {exec_id} not found")
        return run

    # -- apps and images

    def app(self, environment: str, name: str) -> str:
        return self.apps.setdefault((environment, name), new_id("ap-"))

    def image(self, definition: bytes) -> str:
        """The id of an image definition (one image per definition: the same definition is built once)."""
        if definition not in self.image_keys:
            image = Image(new_id("im-"))
            self.images[image.id] = image
            self.image_keys[definition] = image.id
        return self.image_keys[definition]

    # -- sandboxes

    async def create(
        self, app_id: str, definition: api_pb2.Sandbox, env: dict[str, str], tags: dict[str, str]
    ) -> Sandbox:
        if app_id not in self.apps.values():
            raise CloudError("NOT_FOUND", f"App {app_id} not found")
        image = self.images.get(definition.image_id)
        if image is None:
            raise CloudError("NOT_FOUND", f"Image {definition.image_id} not found")
        if not image.ready:
            raise CloudError("FAILED_PRECONDITION", f"Image {definition.image_id} has not been built")
        if definition.name and any(
            box.definition.name == definition.name and box.app_id == app_id for box in self.live().values()
        ):
            raise CloudError("ALREADY_EXISTS", f"Sandbox with name '{definition.name}' already exists")
        sandbox_id = new_id("sb-")
        box = Sandbox(
            id=sandbox_id,
            task_id=new_id("ta-"),
            app_id=app_id,
            definition=definition,
            env=env,
            tags=tags,
            dir=self.root / "sandboxes" / sandbox_id,
            created_at=self._timestamp(),
            image=image,
        )
        box.cloud = self
        await asyncio.to_thread(self._make_files, box, image)
        with self._lock:
            self.sandboxes[box.id] = box
        self.tasks[box.task_id] = box
        box.timer = asyncio.get_running_loop().call_later(
            definition.timeout_secs or 300, self._end_later, box, Result.GENERIC_STATUS_TIMEOUT
        )
        self.touch(box)
        if definition.entrypoint_args:
            box.main = Exec("", box)
            try:
                await box.main.start(list(definition.entrypoint_args), box.base_env(), box.workdir, None)
            except StartError as e:
                failure = Result(status=Result.GENERIC_STATUS_INIT_FAILURE, exception=str(e))
                await self.finish(box, failure)
        return box

    def _timestamp(self) -> float:
        """Now, but after every sandbox so far: the SDK pages through lists by creation time."""
        latest = max((box.created_at for box in self.sandboxes.values()), default=0.0)
        return max(time.time(), latest + 1e-3)

    @staticmethod
    def _make_files(box: Sandbox, image: Image) -> None:
        lay_out(box, image)
        tool = box.upper / FS_TOOLS.lstrip("/")
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text(f"#!{WRAPPER_PYTHON} -IS\n" + FS_TOOLS_SOURCE.read_text())  # (isolated, no site)
        tool.chmod(0o755)

    def touch(self, box: Sandbox) -> None:
        """Activity: the idle timeout starts again (a sandbox with commands running is not idle)."""
        if not box.definition.HasField("idle_timeout_secs") or box.result is not None:
            return
        if box.idle_timer is not None:
            box.idle_timer.cancel()
        box.idle_timer = asyncio.get_running_loop().call_later(
            box.definition.idle_timeout_secs, self._idle, box
        )

    def _idle(self, box: Sandbox) -> None:
        if any(run.ended is None for run in box.execs.values()):
            self.touch(box)
        else:
            self._end_later(box, Result.GENERIC_STATUS_IDLE_TIMEOUT)

    def _end_later(self, box: Sandbox, status: api_pb2.GenericResult.GenericStatus.ValueType) -> None:
        self.spawn(self.finish(box, Result(status=status)))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self, box: Sandbox, result: Result) -> None:
        """End a sandbox: every process killed, its files removed; the result stays for wait and list."""
        if box.result is not None:
            return
        box.result = result
        box.finished_at = time.time()
        for timer in (box.timer, box.idle_timer):
            if timer is not None:
                timer.cancel()
        await signal_all(box.pids, signal.SIGKILL)
        runs = [run.done.wait() for run in [*box.execs.values(), *([box.main] if box.main else [])]]
        with contextlib.suppress(TimeoutError):  # the wrappers report the kills
            await asyncio.wait_for(asyncio.gather(*runs), 5)
        await reap(box.popens)
        box.finished.set()
        await asyncio.to_thread(shutil.rmtree, box.dir, True)

    async def start_exec(
        self,
        box: Sandbox,
        exec_id: str,
        argv: list[str],
        env: dict[str, str],
        workdir: str | None,
        timeout: float | None,
        *,
        stdout: bool,
        stderr: bool,
    ) -> Exec:
        if exec_id in box.execs:  # (a retried start)
            return box.execs[exec_id]
        run = Exec(exec_id, box, pipe_stdout=stdout, pipe_stderr=stderr)
        box.execs[exec_id] = run
        cwd = workdir or box.workdir
        try:
            await run.start(argv, {**box.base_env(), **env}, cwd, timeout)
        except NoWorkdir as e:
            del box.execs[exec_id]
            raise CloudError("INVALID_ARGUMENT", f"workdir {cwd!r} cannot be used: {e}") from None
        except StartError as e:
            del box.execs[exec_id]
            raise CloudError("INTERNAL", f"exec failed to start: {e}") from None
        self.touch(box)
        return run

    async def snapshot(self, box: Sandbox) -> Image:
        """A copy of the sandbox's files (its overlay's upper directory and /tmp), its processes stopped
        meanwhile."""
        source = box.image or Image("")
        image = Image(new_id("im-"), env=dict(source.env), workdir=source.workdir)
        image.files = self.root / "images" / image.id
        await signal_all(box.pids, signal.SIGSTOP)
        try:
            await asyncio.to_thread(copy_tree, box.upper, image.files / "upper")
            await asyncio.to_thread(copy_tree, box.tmp, image.files / "tmp")
        finally:
            await signal_all(box.pids, signal.SIGCONT)
        image.end(Result(status=Result.GENERIC_STATUS_SUCCESS))
        self.images[image.id] = image
        return image

    async def shutdown(self) -> None:
        self.closing = True  # (a build starts no further command)
        for box in list(self.live().values()):
            await self.finish(box, Result(status=Result.GENERIC_STATUS_TERMINATED))
        for box in list(self.building):
            await signal_all(box.pids, signal.SIGKILL)
        await asyncio.gather(*self._tasks, return_exceptions=True)
