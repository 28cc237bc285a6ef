"""The thread that starts a local sandbox's commands (flavour-free).

Two things a command must carry from its first instruction are properties of the *thread* that forks it:
its seccomp filter (filters are per thread and inherited by every child) and, on cgroup v1, its cgroup (a
child starts in the cgroups of the thread that forks it, and v1 lets a single thread move). So each sandbox
gets one thread that steps into the sandbox's pids cgroup and installs the sandbox's seccomp filter once,
then forks every command the sandbox runs: no launcher shell, no cgroup move and no filter setup per
command. Only the pids controller takes the thread: in a memory cgroup the kernel's OOM killer could pick
this whole client process, and in a cpu cgroup a busy sandbox would throttle it; memory and CPU limits keep
the per-command launcher (grainchain/_cgroups.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from grainchain import _seccomp as seccomp

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
