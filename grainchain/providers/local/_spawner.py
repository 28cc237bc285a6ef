"""The thread that starts a local sandbox's commands (flavour-free).

Two things a command must carry from its first instruction are properties of the *thread* that forks it:
its seccomp filter (filters are per thread and inherited by every child) and, on cgroup v1, its cgroup (a
child starts in the cgroups of the thread that forks it, and v1 lets a single thread move). So each sandbox
gets one thread that steps into the sandbox's pids cgroup and installs the sandbox's seccomp filter once,
then forks every command the sandbox runs: no launcher shell, no cgroup move and no filter setup per
command. Only the pids controller takes the thread: in a memory cgroup the kernel's OOM killer could pick
this whole client process, and in a cpu cgroup a busy sandbox would throttle it; memory and CPU limits keep
the per-command launcher (grainchain/providers/local/_cgroups.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from grainchain.providers.local import _seccomp as seccomp

T = TypeVar("T")
THREAD_NAME = "gc-spawn"  # what /proc/<pid>/task/<tid>/comm shows (at most 15 bytes)
_PR_SET_NAME = 15


class Spawner:
    """One thread, placed in `cgroup_tasks` (v1 `tasks` files) and under the seccomp filter when
    `filtered`, that runs the functions submitted to it one after the other. Setup errors surface from the
    constructor."""

    def __init__(self, *, cgroup_tasks: Sequence[str] = (), filtered: bool = True) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(list(cgroup_tasks), filtered, ready), name=THREAD_NAME, daemon=True
        )
        self._thread.start()
        ready.result()  # re-raises what the setup raised

    def _run(self, cgroup_tasks: list[str], filtered: bool, ready: Future[None]) -> None:
        try:
            ctypes.CDLL(None).prctl(_PR_SET_NAME, THREAD_NAME.encode(), 0, 0, 0)
            for tasks in cgroup_tasks:
                with open(tasks, "w") as f:
                    f.write(str(threading.get_native_id()))
            if filtered:
                seccomp.install_on_this_thread()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while (job := self._jobs.get()) is not None:
            fn, result = job
            if not result.set_running_or_notify_cancel():
                continue
            try:
                result.set_result(fn())
            except BaseException as exc:  # handed to whoever waits for the result
                result.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        result: Future[T] = Future()
        if not self._thread.is_alive():
            result.set_exception(RuntimeError("the sandbox's spawner thread has stopped"))
            return result
        self._jobs.put((fn, result))
        return result

    def stop(self, within: float = 10.0) -> None:
        """Let the thread finish what it runs and end (it leaves the cgroup, which can then be removed)."""
        with contextlib.suppress(Exception):
            self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(within)


class SpawnerSlot:
    """Where a sandbox keeps its Spawner, started by the first command that needs one. Starting and
    stopping block while the thread sets up or ends (call them off the event loop); a lock makes two first
    commands at once (two tasks' worker threads, or two threads of the sync client) start one spawner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spawner: Spawner | None = None

    @property
    def current(self) -> Spawner | None:
        """The running spawner, None before the first command and after stop() (never blocks)."""
        return self._spawner

    def start(self, cgroup_tasks: Callable[[], Sequence[str]], filtered: bool) -> Spawner:
        """The spawner, started now if there is none (`cgroup_tasks` is asked only then)."""
        with self._lock:
            if self._spawner is None:
                self._spawner = Spawner(cgroup_tasks=cgroup_tasks(), filtered=filtered)
            return self._spawner

    def stop(self, within: float = 10.0) -> None:
        """Stop the spawner, if any (see Spawner.stop); the next start() starts a new one."""
        with self._lock:
            spawner, self._spawner = self._spawner, None
        if spawner is not None:
            spawner.stop(within)
