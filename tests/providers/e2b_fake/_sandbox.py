"""The fake's state: sandboxes (directories on this machine and the processes running in them), snapshots,
and the lifecycle operations the control plane offers (create, pause, resume, kill, snapshot, fork).

Everything here runs on the fake's event loop thread; `Cloud.live_ids` is also read from the test thread.

A command runs as `bwrap <the sandbox's view> python -c WRAPPER /bin/bash -l -c CMD` (see `tests/providers/_fakebox.py`):
bubblewrap gives it the sandbox's file system (see `_paths.py`) in the host's pid namespace.

The processes of a sandbox are found by looking at `/proc/PID/root/home/user`: a process inside the
sandbox sees the sandbox's home there, whatever it did (daemonised, double-forked), so kill and pause reach
every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import string
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tests.providers._fakebox import (
    PATH_ENV,
    Command,
    Ended,
    copy_tree,
    covers_loopback,
    find_bwrap,
    pids_seeing,
    reap,
    signal_all,
)

from ._http import RequestLink
from ._paths import HOME, USERS, SandboxPaths

log = logging.getLogger(__name__)

ENVD_VERSION = "0.6.4"  # the newest envd feature the SDK 2.63 checks for (watching network mounts)


BWRAP = find_bwrap()
DEFAULT_TIMEOUT = 300  # seconds, as the API's default
CPU_COUNT = 2
MEMORY_MB = 512
DISK_SIZE_MB = 512
BASE_TEMPLATES = frozenset({"base"})
TEAM = "fake-team"
SNAPSHOT_LIMITATION = (
    "the fake's snapshots keep files only: a sandbox started from one gets the files of /home/user and "
    "/tmp, not the running processes or memory, whatever the snapshot mode"
)

State = Literal["running", "paused", "killed"]

# Go's ProcessState.String() names for the signals a command may die of (envd reports them so).
GO_SIGNAL_NAMES = {
    signal.SIGHUP: "hangup",
    signal.SIGINT: "interrupt",
    signal.SIGQUIT: "quit",
    signal.SIGILL: "illegal instruction",
    signal.SIGTRAP: "trace/breakpoint trap",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGKILL: "killed",
    signal.SIGUSR1: "user defined signal 1",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGUSR2: "user defined signal 2",
    signal.SIGPIPE: "broken pipe",
    signal.SIGALRM: "alarm clock",
    signal.SIGTERM: "terminated",
}


class ApiError(Exception):
    """An error answer of the control plane: the SDK reads `code` and `message` of its JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_id(prefix: str, length: int = 20) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length - len(prefix)))


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessEnd:
    """envd's EndEvent, as Go's exec reports a process: an exit status, or the signal that killed it."""

    exit_code: int
    exited: bool
    status: str
    error: str | None

    @classmethod
    def exit(cls, code: int) -> ProcessEnd:
        text = f"exit status {code}"
        return cls(code, True, text, None if code == 0 else text)

    @classmethod
    def signal(cls, number: int) -> ProcessEnd:
        try:
            name = GO_SIGNAL_NAMES.get(signal.Signals(number), f"signal {number}")
        except ValueError:
            name = f"signal {number}"
        text = f"signal: {name}"
        return cls(-1, False, text, text)


# What a subscriber of a process receives: output ("stdout"/"stderr", bytes) or its end.
ProcessItem = tuple[Literal["stdout", "stderr"], bytes] | ProcessEnd


@dataclass(eq=False)
class Process:
    """One command of a sandbox, from its start to its end event; envd's process handler."""

    sandbox: Sandbox
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None
    stdin_enabled: bool
    pid: int = 0
    end: ProcessEnd | None = None
    subscribers: set[asyncio.Queue[ProcessItem]] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _command: Command | None = None

    def subscribe(self) -> asyncio.Queue[ProcessItem]:
        queue: asyncio.Queue[ProcessItem] = asyncio.Queue()
        if self.end is not None:
            queue.put_nowait(self.end)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ProcessItem]) -> None:
        self.subscribers.discard(queue)

    def _publish(self, item: ProcessItem) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait(item)

    async def launch(self, user: str, timeout_ms: float | None) -> None:
        """Start the command; returns once its pid is known. Raises StartError."""
        box = self.sandbox
        home = USERS[user]
        env = {
            "PATH": PATH_ENV,
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            # what E2B's orchestrator gives every sandbox (through envd's /init)
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": box.id,
            "E2B_TEMPLATE_ID": box.template_id,
            **box.env_vars,
            **self.envs,
        }
        cwd = box.paths.expand(self.cwd or "", user)
        bwrap = [
            BWRAP,
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *box.paths.bwrap_binds(),
            *(["--unshare-net"] if not box.internet else []),
            # bubblewrap run by root keeps root's capabilities (mount, ptrace...) unless told otherwise
            "--cap-drop", "ALL",
            "--die-with-parent", "--new-session", "--chdir", cwd,
        ]  # fmt: skip
        self._command = Command(lambda name, data: self._publish((name, data)), self._finish)
        # envd runs the process under the request's deadline (SIGKILL at the end)
        timeout = None if timeout_ms is None else timeout_ms / 1000
        self.pid = await self._command.start(
            bwrap, [self.cmd, *self.args], env, popens=box.popens, stdin=self.stdin_enabled, timeout=timeout
        )
        if self.end is None:  # (a quick command may be over already)
            box.processes[self.pid] = self

    def _finish(self, ended: Ended) -> None:
        end = ProcessEnd.exit(ended.code) if ended.code is not None else ProcessEnd.signal(ended.signal or 0)
        self.end = end
        self.ended.set()
        self._publish(end)
        if self.sandbox.processes.get(self.pid) is self:
            del self.sandbox.processes[self.pid]

    def send_signal(self, sig: int) -> None:
        if self._command is not None:
            self._command.send_signal(sig)

    async def write_stdin(self, data: bytes) -> None:
        if self._command is None:
            raise OSError("stdin not enabled or closed")
        await self._command.write_stdin(data)

    def close_stdin(self) -> None:
        if self._command is not None:
            self._command.close_stdin()


# ---------------------------------------------------------------------------------------------- sandboxes


@dataclass(eq=False)
class Sandbox:
    id: str
    paths: SandboxPaths
    template_id: str
    alias: str | None
    metadata: dict[str, str]
    env_vars: dict[str, str]
    timeout: int
    auto_pause: bool
    auto_pause_memory: bool
    auto_resume: bool
    allow_internet_access: bool | None
    network: dict[str, Any] | None
    from_snapshot: str | None = None
    state: State = "running"
    pause_mode: Literal["full", "filesystem"] | None = None
    envd_access_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    started_at: datetime = field(default_factory=utcnow)
    end_at: datetime = field(default_factory=utcnow)
    processes: dict[int, Process] = field(default_factory=dict)
    links: set[RequestLink] = field(default_factory=set)
    popens: set[subprocess.Popen[bytes]] = field(default_factory=set)  # bubblewrap, until waited for
    envd_apps: Any = None  # the envd Connect-RPC apps serving this sandbox, made by _envd on first use
    timer: asyncio.TimerHandle | None = None

    @property
    def internet(self) -> bool:
        """Whether commands share the host's network. The fake's only reachable network is the host's
        loopback, so an allow-list is enforced as exactly that: the host is reachable only when the list
        covers 127.0.0.1 (or names localhost)."""
        if self.allow_internet_access is False:
            return False
        deny = (self.network or {}).get("denyOut") or []
        allow = (self.network or {}).get("allowOut") or []
        if any(covers_loopback(entry) for entry in allow):
            return True
        return not any(covers_loopback(entry) for entry in deny)

    def drop_links(self) -> None:
        """End every request in flight to the sandbox's envd, as the edge proxy does when it goes away."""
        for link in list(self.links):
            link.drop()
        self.links.clear()

    async def signal_all(self, sig: int) -> set[int]:
        """Send `sig` to every process of the sandbox: those whose `/home/user` is the sandbox's home."""
        return await signal_all(lambda: pids_seeing(self.paths.home, HOME), sig)

    async def stop_processes(self) -> None:
        """Kill every process and forget them (the sandbox's memory is lost: filesystem pause, reboot)."""
        await self.signal_all(signal.SIGKILL)
        await self.settle()
        self.processes.clear()

    async def settle(self, timeout: float = 2.0) -> None:
        """Give the killed processes' wrappers a moment to report, so end events carry the signal."""
        ending = [p.ended.wait() for p in self.processes.values()]
        if ending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*ending), timeout)


@dataclass(eq=False)
class Snapshot:
    id: str
    name: str | None
    names: list[str]
    source_sandbox_id: str
    path: Path
    memory_requested: bool
    created_at: datetime = field(default_factory=utcnow)


class Cloud:
    """The control plane's state and operations. Methods run on the event loop."""

    def __init__(self, root: Path, templates: set[str]) -> None:
        self.root = root
        self.templates = set(BASE_TEMPLATES) | templates
        self.sandboxes: dict[str, Sandbox] = {}  # live ones (running or paused)
        self.snapshots: dict[str, Snapshot] = {}
        self.idempotency: dict[str, str] = {}  # key -> sandbox id
        self._lock = threading.Lock()  # guards `sandboxes` for readers on other threads
        self._tasks: set[asyncio.Task[None]] = set()
        (root / "sandboxes").mkdir(parents=True, exist_ok=True)
        (root / "snapshots").mkdir(parents=True, exist_ok=True)

    # -- queries

    def live_ids(self) -> list[str]:
        with self._lock:
            return list(self.sandboxes)

    def get(self, sandbox_id: str) -> Sandbox:
        box = self.sandboxes.get(sandbox_id)
        if box is None:
            raise ApiError(404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")
        return box

    def find_snapshot(self, ref: str) -> Snapshot | None:
        """By id, or by name as `name`, `name:tag`, `team/name` or `team/name:tag`."""
        if ref in self.snapshots:
            return self.snapshots[ref]
        bare = ref.split("/", 1)[-1].split(":", 1)[0]
        for snapshot in self.snapshots.values():
            if ref in snapshot.names or (snapshot.name is not None and snapshot.name == bare):
                return snapshot
        return None

    # -- lifecycle

    async def create(
        self,
        *,
        template: str,
        timeout: int,
        metadata: dict[str, str],
        env_vars: dict[str, str],
        auto_pause: bool,
        auto_pause_memory: bool,
        auto_resume: bool,
        allow_internet_access: bool | None,
        network: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> tuple[Sandbox, bool]:
        """A new sandbox (or, for a known idempotency key, the one it made: the bool says which)."""
        if idempotency_key is not None and idempotency_key in self.idempotency:
            known = self.sandboxes.get(self.idempotency[idempotency_key])
            if known is not None:
                return known, False
        snapshot = self.find_snapshot(template)
        if snapshot is None and template not in self.templates:
            raise ApiError(404, f"template '{template}' not found")
        box = self._new_sandbox(
            template_id=snapshot.id if snapshot else template,
            alias=snapshot.name if snapshot else template,
            timeout=timeout,
            metadata=metadata,
            env_vars=env_vars,
            auto_pause=auto_pause,
            auto_pause_memory=auto_pause_memory,
            auto_resume=auto_resume,
            allow_internet_access=allow_internet_access,
            network=network,
            from_snapshot=snapshot.id if snapshot else None,
        )
        if snapshot is not None:
            await asyncio.to_thread(copy_tree, snapshot.path, box.paths.root)
        if idempotency_key is not None:
            self.idempotency[idempotency_key] = box.id
        return box, True

    def _new_sandbox(self, **fields: Any) -> Sandbox:
        sandbox_id = new_id("i")
        box = Sandbox(id=sandbox_id, paths=SandboxPaths(self.root / "sandboxes" / sandbox_id), **fields)
        box.paths.create()
        with self._lock:
            self.sandboxes[sandbox_id] = box
        self.set_timeout(box, box.timeout)
        return box

    def set_timeout(self, box: Sandbox, seconds: int) -> None:
        """The sandbox ends `seconds` from now (killed, or paused when its lifecycle says so)."""
        if box.timer is not None:
            box.timer.cancel()
        now = utcnow()
        box.end_at = datetime.fromtimestamp(now.timestamp() + seconds, UTC)
        box.timer = asyncio.get_running_loop().call_later(max(seconds, 0), self._spawn_expire, box)

    def _spawn_expire(self, box: Sandbox) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(box))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, box: Sandbox) -> None:
        if box.state != "running":
            return
        if box.auto_pause:
            await self.pause(box, memory=box.auto_pause_memory)
        else:
            await self.kill(box)

    async def kill(self, box: Sandbox) -> None:
        if box.state == "killed":
            return
        box.state = "killed"
        if box.timer is not None:
            box.timer.cancel()
        with self._lock:
            self.sandboxes.pop(box.id, None)
        box.drop_links()
        await box.stop_processes()
        await reap(box.popens)
        await asyncio.to_thread(shutil.rmtree, box.paths.root, True)

    async def pause(self, box: Sandbox, *, memory: bool) -> None:
        """Full pause keeps the memory: every process is stopped (SIGSTOP) and continues on resume.
        Filesystem pause keeps only files: every process is killed."""
        if box.state != "running":
            raise ApiError(409, f'sandbox "{box.id}" is already paused')
        box.state = "paused"
        box.pause_mode = "full" if memory else "filesystem"
        if box.timer is not None:
            box.timer.cancel()
        box.drop_links()
        if memory:
            await box.signal_all(signal.SIGSTOP)
        else:
            await box.stop_processes()

    async def resume(self, box: Sandbox, *, timeout: int, memory: bool = True) -> None:
        """Back to running: stopped processes continue, unless the pause kept no memory or the caller asked
        for a reboot (`memory=False`), when they are gone."""
        if box.state != "paused":
            return
        if box.pause_mode == "full" and memory:
            await box.signal_all(signal.SIGCONT)
        else:
            await box.stop_processes()
        box.state = "running"
        box.pause_mode = None
        self.set_timeout(box, timeout)

    async def snapshot(self, box: Sandbox, *, name: str | None, memory: bool) -> Snapshot:
        """Copy the sandbox's files (its processes stopped meanwhile, as E2B pauses it while it snapshots)."""
        existing = self.find_snapshot(name) if name else None
        snapshot_id = existing.id if existing else new_id("s")
        path = self.root / "snapshots" / snapshot_id
        running = box.state == "running"
        if running:
            await box.signal_all(signal.SIGSTOP)
        try:
            await asyncio.to_thread(shutil.rmtree, path, True)
            await asyncio.to_thread(copy_tree, box.paths.root, path)
        finally:
            if running:
                await box.signal_all(signal.SIGCONT)
        names = [f"{TEAM}/{name}:default"] if name else []
        snapshot = Snapshot(snapshot_id, name, names, box.id, path, memory)
        self.snapshots[snapshot_id] = snapshot
        return snapshot

    async def delete_snapshot(self, ref: str) -> bool:
        snapshot = self.find_snapshot(ref)
        if snapshot is None:
            return False
        del self.snapshots[snapshot.id]
        await asyncio.to_thread(shutil.rmtree, snapshot.path, True)
        return True

    async def fork(self, box: Sandbox, *, timeout: int) -> Sandbox:
        """A new sandbox with a copy of the files (not the processes) of `box`."""
        child = self._new_sandbox(
            template_id=box.template_id,
            alias=box.alias,
            timeout=timeout,
            metadata=dict(box.metadata),
            env_vars=dict(box.env_vars),
            auto_pause=box.auto_pause,
            auto_pause_memory=box.auto_pause_memory,
            auto_resume=box.auto_resume,
            allow_internet_access=box.allow_internet_access,
            network=box.network,
            from_snapshot=box.from_snapshot,
        )
        running = box.state == "running"
        if running:
            await box.signal_all(signal.SIGSTOP)
        try:
            await asyncio.to_thread(copy_tree, box.paths.root, child.paths.root)
        finally:
            if running:
                await box.signal_all(signal.SIGCONT)
        return child

    async def shutdown(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)  # timeouts being carried out finish first
        for box in list(self.sandboxes.values()):
            await self.kill(box)
