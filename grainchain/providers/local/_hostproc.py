"""Host processes for the local provider: spawn with a scrubbed environment, find and kill whole trees.

Every process gets marker variables (GRAINCHAIN_SANDBOX_ID, GRAINCHAIN_EXEC_ID) that its descendants inherit.
Killing a tree kills the process group and then every process that still carries the marker, which catches
children that left the group with setsid (daemons, `nohup … &`) and those that wiped their environment but
stayed in the group. Not caught: a process that both leaves the group and wipes its environment, and, once
its command has exited normally, a child that wiped its environment (closing the sandbox finds processes
by the sandbox marker only). With isolation="namespaces" (grainchain/providers/local/_isolation.py) a sandbox's own pid
namespace and cgroup bound what it can start; the markers still find the processes from the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Which state dir's sandbox a process belongs to, as a hash (no host path enters a sandbox): lets tests and
# tools tell apart the processes of concurrent grainchain users of one machine.
STATE_MARKER = "GRAINCHAIN_STATE_TAG"
SHELL = "/bin/sh"
Candidates = Callable[[], Iterable[int]]  # the pids a kill looks among (a sandbox's cgroup members)


def state_tag(state_dir: Path) -> str:
    """The STATE_MARKER value of sandboxes under `state_dir` (resolved)."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


def scrubbed_environment(*layers: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment (PATH, LANG) overlaid by each layer in turn; nothing comes from the host."""
    env = {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8"}
    for layer in layers:
        env.update(layer)
    return env


@dataclass
class HostProcess:
    popen: subprocess.Popen[bytes]
    marker: str  # "NAME=value" entry every descendant inherits
    exit_fd: int | None = field(default=None)
    candidates: Candidates | None = field(default=None)  # where its descendants are (else all of /proc)
    # nsenter: it forks the command into the sandbox's pid namespace and waits for it. Killed with the
    # command, it would hand the command's zombie to the host's init, and the pid namespace cannot end
    # (a close waits for that) before that init reaps it: 1-2 s on some machines. So it is spared once it
    # has forked; it reaps the killed command and exits by itself.
    reaps_its_child: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout_fd(self) -> int:
        assert self.popen.stdout is not None
        return self.popen.stdout.fileno()

    @property
    def stderr_fd(self) -> int:
        assert self.popen.stderr is not None
        return self.popen.stderr.fileno()

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_tree(self) -> None:
        """SIGKILL the process, its group and every process carrying its marker. Does not wait: whoever
        drains the process reaps it (so another thread may call this while a pump runs)."""
        if self.reaps_its_child:  # (its command left its process group: killpg would reach only nsenter)
            kill_marked(self.marker, self.candidates, spare=self.pid)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        kill_marked(self.marker, self.candidates)

    def kill_tree(self) -> None:
        """signal_tree(), then reap the process (a brief blocking wait: SIGKILL cannot be ignored)."""
        self.signal_tree()
        self.popen.wait()

    def close(self) -> None:
        """Release the pipes and the pidfd (the process itself must have been reaped or killed)."""
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()
        self.close_stdin()

    def close_stdin(self) -> None:
        """End of file for the command (its stdin pipe, if it has one); idempotent."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):  # BrokenPipeError: it had nothing buffered anyway
                self.popen.stdin.close()
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None


def spawn(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    marker: tuple[str, str],
    prefix: Sequence[str] = (),
    stdin: str = os.devnull,
    stdin_pipe: bool = False,
) -> HostProcess:
    """Start `sh -c command` in a new session (its own process group) with exactly `env` plus the marker.

    `prefix` is an argv that execs the shell in the end (cgroup placement, rlimits, entering namespaces);
    each program in it must keep the environment. `stdin` is the file the command reads (an isolated
    sandbox's own /dev/null); `stdin_pipe`: a pipe instead, whose end is `popen.stdin` (non-blocking)."""
    name, value = marker
    with open(stdin, "rb") as source:
        popen = subprocess.Popen(
            [*prefix, SHELL, "-c", command],
            cwd=cwd,
            env={**env, name: value},
            # the pipe's end here is close-on-exec: a command started meanwhile cannot hold it open
            stdin=subprocess.PIPE if stdin_pipe else source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    if popen.stdin is not None:
        os.set_blocking(popen.stdin.fileno(), False)  # a writer waits for room, never blocks in write()
    exit_fd = None
    with contextlib.suppress(AttributeError, OSError):  # no pidfd: callers poll instead
        exit_fd = os.pidfd_open(popen.pid)
    return HostProcess(popen, f"{name}={value}", exit_fd)


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except FileNotFoundError:  # no /proc: nothing to find
        return []


def marked_pids(marker: str, candidates: Candidates | None = None) -> list[int]:
    """PIDs of the processes whose environment holds the `NAME=value` marker, among `candidates()` (a
    sandbox's cgroup members: no scan of the whole host) or else every process of /proc."""
    entry = marker.encode()
    found = []
    me = os.getpid()
    for pid in _all_pids() if candidates is None else candidates():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours
            continue
        if entry in environ.split(b"\0"):
            found.append(pid)
    return found


def stop_then_kill(find: Candidates, *, within: float = 5.0, spare: int | None = None) -> None:
    """SIGKILL every process `find()` returns, in a way a fork bomb cannot outrun: all stopped first (see
    stop_all), then SIGKILL, again until none is left or `within` seconds have passed. `spare`: a process
    left alive (and continued) if it has a child once stopped (see HostProcess.reaps_its_child)."""
    deadline = time.monotonic() + within
    held = stop_all(find, within=within)
    spared = _spared(spare, held)
    try:
        while True:
            left = [pid for pid in find() if pid not in spared]
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not left or time.monotonic() >= deadline:
                return
            time.sleep(0.001)  # killed processes leave the listing once they have exited
    finally:
        _release(spared)


def _spared(spare: int | None, stopped: set[int]) -> set[int]:
    """{spare} when it is stopped and has forked its child (a launcher that has not forked yet is killed:
    sparing it would let it start the command after the kill)."""
    return {spare} if spare is not None and spare in stopped and children(spare) else set()


def continue_all(pids: Iterable[int], *, within: float = 1.0) -> None:
    """SIGCONT each process, then once more each nsenter until it waits again: nsenter waits for its child
    with WUNTRACED and, told that the child was stopped (by the SIGSTOP of a kill or a freeze), stops itself,
    continuing the child only once continued again. Left stopped, it would never reap its child, and the
    command's caller would wait forever."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
    launchers = {pid for pid in pids if _comm(pid) == "nsenter"}
    deadline = time.monotonic() + within
    while launchers and time.monotonic() < deadline:
        for pid in list(launchers):
            state = process_state(pid)
            if state in ("T", "t"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
            elif state != "R":  # waiting (S), or gone
                launchers.discard(pid)
        if launchers:
            time.sleep(0.0005)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """The pids of a process's children (zombies included until reaped); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _release(spared: Iterable[int], *, within: float = 1.0) -> None:
    """Continue each spared launcher (see continue_all) so that it reaps its killed child and exits; one that
    has not reaped it once continued is killed after all."""
    spared = list(spared)
    continue_all(spared)
    deadline = time.monotonic() + within
    for pid in spared:
        while children(pid):  # the killed child exits, then nsenter reaps it
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.0005)


def process_state(pid: int) -> str:
    """The one-letter state of a process (T stopped, Z zombie ...), "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def stop_all(find: Candidates, *, within: float = 5.0) -> set[int]:
    """SIGSTOP every process `find()` returns, round after round until every one of them has stopped and
    no new one appeared (a stopped process cannot fork; one that was signalled in the middle of a fork may
    still finish it, hence the wait for the stop itself); the pids stopped."""
    deadline = time.monotonic() + within
    stopped: set[int] = set()
    quiet = 0
    while time.monotonic() < deadline:
        # Whether all have stopped is read before the listing: a process signalled in the middle of a fork
        # stops only once its child exists, so a listing taken after all have stopped shows every child.
        # (Read after the listing, a child born in between would be missed and go on forking.) A process in
        # uninterruptible sleep counts as held: it stops before it runs code of its own again, and it may
        # never leave that sleep while we wait (a shell in vfork() whose child was stopped before its exec);
        # a second quiet round catches a child it may still have forked.
        settled = all(process_state(pid) in ("T", "t", "D", "Z", "X", "") for pid in stopped)
        fresh = [pid for pid in find() if pid not in stopped]
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        quiet = quiet + 1 if settled and not fresh else 0
        if quiet >= 2:
            break
        if not fresh:
            time.sleep(0.001)
    return stopped


def kill_marked(
    marker: str, candidates: Candidates | None = None, *, within: float = 5.0, spare: int | None = None
) -> None:
    """SIGKILL every process carrying the marker. Among a sandbox's `candidates()` (its cgroup), the whole
    sandbox is stopped first, then the marked processes are found at leisure and killed and the others
    continue: reading thousands of environments while a fork bomb runs would never end. (A process that
    was stopped on purpose continues too.) Without candidates: every process of /proc, see stop_then_kill.
    `spare`: see stop_then_kill."""
    if candidates is None:
        stop_then_kill(lambda: marked_pids(marker), within=within, spare=spare)
        return
    held = stop_all(candidates, within=within)
    doomed: set[int] = set()
    spared: set[int] = set()
    try:
        spared = _spared(spare, held)
        doomed = set(marked_pids(marker, lambda: held)) - spared
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    finally:
        continue_all(held - doomed - spared)
        _release(spared)
