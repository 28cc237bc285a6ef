"""The only place where the async and the sync world differ.

Code under grainchain/_async/ imports its primitives from here (never asyncio or threading) and codegen's
unasync step renames them for grainchain/_sync/: each async name on the left has a sync twin on the right.

    aselect        -> select          wait until some file descriptors are readable
    astart_task    -> start_task      run a function concurrently (task / daemon thread)
    AsyncTask      -> Task
    arun_blocking  -> run_blocking    blocking I/O off the event loop (sync: just call it)
    arun_in        -> run_in          run a function on a given thread (a sandbox's spawner) and wait for it
    AFLAVOUR       -> FLAVOUR         "async" / "sync": which adapter class a provider loads
"""

from __future__ import annotations

import asyncio
import functools
import select as _select
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, ParamSpec, Protocol, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class Runner(Protocol):
    """Something that runs a function on its own thread (grainchain/_spawner.py's Spawner)."""

    def submit(self, fn: Callable[[], T]) -> Future[T]: ...


_POLL_READABLE = _select.POLLIN | _select.POLLHUP | _select.POLLERR | _select.POLLNVAL


# --------------------------------------------------------------------------------------------- async

AFLAVOUR = "async"


async def aselect(fds: Iterable[int], timeout: float | None) -> list[int]:
    """The descriptors of `fds` that are readable (or closed), waiting at most `timeout` seconds."""
    loop = asyncio.get_running_loop()
    ready: set[int] = set()
    woken: asyncio.Future[None] = loop.create_future()
    watched = list(fds)

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    def on_readable(fd: int) -> None:
        ready.add(fd)
        wake()

    # Not asyncio.wait_for(woken, timeout): on Python 3.11 it returns normally, swallowing a cancellation,
    # when the future is already done as the cancellation arrives (bpo-42130) — with a chatty command that
    # is every other cancel(), and the command would then run on.
    timer = None if timeout is None else loop.call_later(max(0.0, timeout), wake)
    try:
        for fd in watched:
            loop.add_reader(fd, on_readable, fd)
        await woken
    finally:
        if timer is not None:
            timer.cancel()
        for fd in watched:
            loop.remove_reader(fd)
    return sorted(ready)


class AsyncTask:
    """A function running concurrently as an asyncio task."""

    def __init__(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._task = asyncio.get_running_loop().create_task(fn())

    def done(self) -> bool:
        return self._task.done()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait for the function to finish; False if it still runs after `timeout` seconds."""
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if done:
            self._task.result()  # re-raise what the function raised
        return bool(done)


def astart_task(fn: Callable[[], Coroutine[Any, Any, None]]) -> AsyncTask:
    return AsyncTask(fn)


async def arun_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking I/O (file copies, directory walks) in a worker thread, off the event loop."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


def _hand_over(job: Future[T], abandoned: Callable[[T], object] | None) -> None:
    """The caller stopped waiting (cancelled, interrupted): what the job makes still needs an owner."""
    if job.cancel():  # not started yet: nothing will be made
        return
    if abandoned is not None:
        job.add_done_callback(lambda done: None if done.exception() else abandoned(done.result()))


async def arun_in(runner: Runner, fn: Callable[[], T], abandoned: Callable[[T], object] | None = None) -> T:
    """Run `fn` on the runner's thread; the event loop goes on meanwhile. A cancellation does not stop
    `fn` (it may be starting a process): its result goes to `abandoned` instead, whenever it comes."""
    job = runner.submit(fn)
    try:
        return await asyncio.shield(asyncio.wrap_future(job))
    except BaseException:
        _hand_over(job, abandoned)
        raise


# ---------------------------------------------------------------------------------------------- sync

FLAVOUR = "sync"


def select(fds: Iterable[int], timeout: float | None) -> list[int]:
    """The descriptors of `fds` that are readable (or closed), waiting at most `timeout` seconds."""
    poller = _select.poll()  # poll, not select.select: no limit on descriptor numbers
    for fd in fds:
        poller.register(fd, _POLL_READABLE)
    events = poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
    return sorted({fd for fd, _ in events})


class Task:
    """A function running concurrently in a daemon thread."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name="grainchain-task")
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # handed to whoever joins, like an asyncio task does
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the function to finish; False if it still runs after `timeout` seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self._error is not None:
            raise self._error
        return True


def start_task(fn: Callable[[], None]) -> Task:
    return Task(fn)


def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return fn(*args, **kwargs)


def run_in(runner: Runner, fn: Callable[[], T], abandoned: Callable[[T], object] | None = None) -> T:
    job = runner.submit(fn)
    try:
        return job.result()
    except BaseException:  # KeyboardInterrupt while waiting
        _hand_over(job, abandoned)
        raise


__all__ = [
    "AFLAVOUR",
    "FLAVOUR",
    "AsyncTask",
    "Runner",
    "Task",
    "arun_blocking",
    "arun_in",
    "aselect",
    "astart_task",
    "run_blocking",
    "run_in",
    "select",
    "start_task",
]
