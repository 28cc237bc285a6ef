"""The only place where the async and the sync world differ.

Code under grainchain/_async/ imports its primitives from here (never asyncio or threading) and codegen's
unasync step renames them for grainchain/_sync/: each async name on the left has a sync twin on the right.

    aselect        -> select          wait until some file descriptors are readable
    astart_task    -> start_task      run a function concurrently (task / daemon thread)
    AsyncTask      -> Task
    arun_blocking  -> run_blocking    blocking I/O off the event loop (sync: just call it)
    arun_to_end    -> run_to_end      the same for work that must be done even when the caller is cancelled
                                      (kills, releases): a cancellation stops the wait, not the work
    arun_in        -> run_in          run a function on a given thread (a sandbox's spawner) and wait for it
    AFLAVOUR       -> FLAVOUR         "async" / "sync": which adapter class a provider loads
    ascope         -> scope           what a shared backend is bound to (the event loop / nothing)
    asleep         -> sleep           pause the task / the thread
    AsyncEvent     -> Event           a flag one side sets and another waits for (with a timeout)
    afail_after    -> fail_after      bound a block in time (async: cancelled at the deadline, TimeoutError;
                                      sync: cannot interrupt, the block honours the Deadline it is given)

Deadline (what afail_after / fail_after yield) is the same in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import select as _select
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, ParamSpec, Protocol, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class Runner(Protocol):
    """Something that runs a function on its own thread (grainchain/providers/local/_spawner.py's Spawner)."""

    def submit(self, fn: Callable[[], T]) -> Future[T]: ...


_POLL_READABLE = _select.POLLIN | _select.POLLHUP | _select.POLLERR | _select.POLLNVAL


class Deadline:
    """When a bounded block (afail_after / fail_after) must be done, on the time.monotonic() clock.

    Calls inside the block that take a timeout of their own get `remaining()`: in the sync flavour that is
    what bounds them (a blocking call cannot be interrupted from outside)."""

    def __init__(self, seconds: float | None) -> None:
        self.at: float | None = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        """Seconds left (0.0 once passed); None when there is no bound."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


# --------------------------------------------------------------------------------------------- async

AFLAVOUR = "async"


def ascope() -> int:
    """What shared resources are bound to: the running event loop (an async client cannot cross loops)."""
    return id(asyncio.get_running_loop())


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


async def awritable(fd: int, timeout: float | None) -> bool:
    """Whether `fd` can be written (or its reader is gone: the write then fails), waiting at most `timeout`."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    timer = None if timeout is None else loop.call_later(max(0.0, timeout), wake)
    writable = False

    def on_writable() -> None:
        nonlocal writable
        writable = True
        wake()

    try:
        loop.add_writer(fd, on_writable)
        await ready
    finally:
        if timer is not None:
            timer.cancel()
        loop.remove_writer(fd)
    return writable


class AsyncLock:
    """Mutual exclusion between tasks (asyncio.Lock); `async with lock:`."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


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
    """Run blocking I/O (file copies, directory walks) in a worker thread, off the event loop. A caller
    cancelled before a worker took the job drops it: see arun_to_end for work that must be done."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


async def arun_to_end(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking work that must be done even if the caller is cancelled meanwhile (kill a command,
    release its pipes, stop a thread) in a worker thread, off the event loop: a cancellation ends the
    wait at once, never the work, which runs to its end (asyncio.run waits for it before it returns)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, functools.partial(fn, *args, **kwargs))
    return await asyncio.shield(loop.run_in_executor(None, call))


def _hand_over(job: Future[T], abandoned: Callable[[T], object] | None) -> None:
    """The caller stopped waiting (cancelled, interrupted): what the job makes still needs an owner."""
    if job.cancel():  # not started yet: nothing will be made
        return
    if abandoned is not None:
        job.add_done_callback(lambda done: None if done.exception() else abandoned(done.result()))


def _off_the_loop(abandoned: Callable[[T], object]) -> Callable[[T], object]:
    """`abandoned` as a done callback that never runs on the event loop's thread: a job that was already
    done when its caller stopped waiting calls it at once, on the loop; it goes to a worker thread then
    (it kills a process tree: a /proc scan and a wait). Called from the runner's thread it runs in place."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def call(made: T) -> object:
        if threading.get_ident() != loop_thread:
            return abandoned(made)
        try:
            return loop.run_in_executor(None, abandoned, made)
        except RuntimeError:  # the loop's executor is shut down already: nothing else would do it
            return abandoned(made)

    return call


async def arun_in(runner: Runner, fn: Callable[[], T], abandoned: Callable[[T], object] | None = None) -> T:
    """Run `fn` on the runner's thread; the event loop goes on meanwhile. A cancellation does not stop
    `fn` (it may be starting a process): its result goes to `abandoned` instead, whenever it comes (in a
    worker thread or the runner's, never on the event loop)."""
    job = runner.submit(fn)
    try:
        return await asyncio.shield(asyncio.wrap_future(job))
    except BaseException:
        _hand_over(job, None if abandoned is None else _off_the_loop(abandoned))
        raise


async def asleep(seconds: float) -> None:
    """Pause for `seconds` (none when negative); the event loop goes on meanwhile."""
    await asyncio.sleep(max(0.0, seconds))


class AsyncEvent:
    """A flag that one task sets and others wait for. Set it on the event loop's thread."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set: True, or False when `timeout` seconds pass first (None: no limit)."""
        if self._event.is_set():
            return True
        try:
            async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                await self._event.wait()
        except TimeoutError:
            return self._event.is_set()
        return True


@contextlib.asynccontextmanager
async def afail_after(seconds: float | None) -> AsyncIterator[Deadline]:
    """Bound the block to `seconds` (None: unbounded): at the deadline it is cancelled and TimeoutError
    raised, so an awaited SDK call that would hang ends in time. Yields the Deadline, for calls that take
    a timeout of their own (what the sync twin relies on). A cancellation from outside stays one."""
    deadline = Deadline(seconds)
    async with asyncio.timeout(None if seconds is None else max(0.0, seconds)):
        yield deadline


# ---------------------------------------------------------------------------------------------- sync

FLAVOUR = "sync"


def scope() -> int:
    """What shared resources are bound to: nothing (blocking clients are shared by every thread)."""
    return 0


def select(fds: Iterable[int], timeout: float | None) -> list[int]:
    """The descriptors of `fds` that are readable (or closed), waiting at most `timeout` seconds."""
    poller = _select.poll()  # poll, not select.select: no limit on descriptor numbers
    for fd in fds:
        poller.register(fd, _POLL_READABLE)
    events = poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
    return sorted({fd for fd, _ in events})


def writable(fd: int, timeout: float | None) -> bool:
    """Whether `fd` can be written (or its reader is gone: the write then fails), waiting at most `timeout`."""
    poller = _select.poll()
    poller.register(fd, _select.POLLOUT)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))


class Lock:
    """Mutual exclusion between threads (threading.Lock); `with lock:`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


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


def run_to_end(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return fn(*args, **kwargs)


def run_in(runner: Runner, fn: Callable[[], T], abandoned: Callable[[T], object] | None = None) -> T:
    job = runner.submit(fn)
    try:
        return job.result()
    except BaseException:  # KeyboardInterrupt while waiting
        _hand_over(job, abandoned)
        raise


def sleep(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


class Event:
    """A flag that one thread sets and others wait for (threading.Event)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set: True, or False when `timeout` seconds pass first (None: no limit)."""
        return self._event.wait(None if timeout is None else max(0.0, timeout))


@contextlib.contextmanager
def fail_after(seconds: float | None) -> Iterator[Deadline]:
    """The sync twin of afail_after: a blocking call cannot be interrupted from outside, so nothing is
    cancelled or raised here. The block bounds itself: every blocking call in it takes the remaining time
    (`deadline.remaining()`) as its own timeout, or checks `deadline.expired()` between steps."""
    yield Deadline(seconds)


__all__ = [
    "AFLAVOUR",
    "FLAVOUR",
    "AsyncEvent",
    "AsyncLock",
    "AsyncTask",
    "Deadline",
    "Event",
    "Lock",
    "Runner",
    "Task",
    "afail_after",
    "arun_blocking",
    "arun_in",
    "arun_to_end",
    "aselect",
    "asleep",
    "astart_task",
    "awritable",
    "fail_after",
    "run_blocking",
    "run_in",
    "run_to_end",
    "select",
    "sleep",
    "start_task",
    "writable",
]
