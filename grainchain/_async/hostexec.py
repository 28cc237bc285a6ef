"""Run host processes for the local provider: copy their output while they run, enforce deadlines and caps.

One loop (`pump`) serves both execute() and background processes; in the sync client the same loop runs in
the caller's thread or in a daemon thread (see grainchain/_acompat.py).
"""

from __future__ import annotations

import os
import time

from grainchain._acompat import arun_blocking, aselect
from grainchain._async.process import AsyncProcessHandle
from grainchain._hostproc import HostProcess
from grainchain._output import OutputCollector, Stream
from grainchain.models import ExecutionResult

CHUNK = 65536
# After the shell exits, a background child it left may keep the pipes open; stop reading then.
DRAIN_GRACE = 0.05
POLL_TICK = 0.02  # only where the kernel has no pidfd


async def pump(child: HostProcess, output: OutputCollector, deadline: float | None) -> bool:
    """Copy output until the process has exited and its pipes are drained (True), or until the deadline
    passes or the output overflows (False, process still running)."""
    streams = {child.stdout_fd: Stream.STDOUT, child.stderr_fd: Stream.STDERR}
    drain_until: float | None = None
    while True:
        now = time.monotonic()
        running = child.poll() is None
        if running:
            wait = None if deadline is None else deadline - now
            if wait is not None and wait <= 0:
                return False
            if child.exit_fd is None:
                wait = POLL_TICK if wait is None else min(wait, POLL_TICK)
        else:
            if not streams:
                return True
            drain_until = drain_until or now + DRAIN_GRACE
            wait = drain_until - now
            if wait <= 0:
                return True
        watched = list(streams)
        if running and child.exit_fd is not None:
            watched.append(child.exit_fd)
        for fd in await aselect(watched, wait):
            if fd not in streams:
                continue  # the exit fd: poll() on the next turn collects the exit code
            data = os.read(fd, CHUNK)
            if data:
                output.feed(streams[fd], data)
                if output.overflowed:
                    return False
            else:
                del streams[fd]


def _exit_code(child: HostProcess) -> int:
    code = child.popen.returncode
    assert code is not None
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as shells report it


async def _reap(child: HostProcess) -> None:
    """Wait until the (killed) process has exited and collect it, without blocking the event loop."""
    while child.poll() is None:
        await aselect([] if child.exit_fd is None else [child.exit_fd], POLL_TICK)


async def _stop(child: HostProcess, output: OutputCollector) -> None:
    """Kill the whole tree, reap it, then collect what it wrote before dying (after an overflow the rest
    would be thrown away: skip it)."""
    await arun_blocking(child.signal_tree)  # it scans /proc: off the event loop
    await _reap(child)
    if not output.overflowed:
        await pump(child, output, None)


async def run_to_completion(
    child: HostProcess,
    command: str,
    output: OutputCollector,
    timeout: float | None,
    started: float | None = None,
) -> ExecutionResult:
    """Wait for `child`; on timeout or overflow kill its tree and raise with the partial output. `started`
    (time.monotonic(), default now): when the command was started; the child runs from its spawn on, so
    the execution time and the deadline count from before it."""
    started = time.monotonic() if started is None else started
    settled = False  # exited by itself, or killed and reaped by _stop
    try:
        if await pump(child, output, None if timeout is None else started + timeout):
            settled = True
            output.finish()
            return output.result(command, _exit_code(child), time.monotonic() - started)
        await _stop(child, output)
        settled = True
        output.finish()
        if output.overflowed:
            raise output.overflow_error(command)
        assert timeout is not None
        raise output.timeout_error(command, timeout)
    finally:
        if not settled:  # interrupted (cancelled, a callback raised …): leave nothing of it running
            child.kill_tree()
        child.close()


class AsyncHostProcessHandle(AsyncProcessHandle):
    """A background host process; a task copies its output until it exits or is killed."""

    def __init__(self, child: HostProcess, command: str, output: OutputCollector) -> None:
        self._child = child
        super().__init__(command, child.pid, output)

    async def _follow(self) -> None:
        """The only code that reads the pipes, reaps the process and closes them; kill() just signals."""
        settled = False
        try:
            if not await pump(self._child, self._output, None):  # overflow
                await _stop(self._child, self._output)
            settled = True
            self._exited(_exit_code(self._child))
        finally:
            if not settled:  # a callback raised, or the task was cancelled: leave nothing running
                self._child.kill_tree()
                self._code = _exit_code(self._child)
            self._child.close()

    async def _signal(self) -> None:
        await arun_blocking(self._child.signal_tree)  # _follow sees the exit, drains and reaps
