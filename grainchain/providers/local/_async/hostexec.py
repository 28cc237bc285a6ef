"""Host processes of the local provider as the shared command plumbing drives them (HostRun): copy their
output while they run, stop at deadlines and caps, kill whole trees.

One loop (`pump`) serves both execute() and background processes; in the sync client the same loop runs in
the caller's thread or in a daemon thread (see grainchain/_acompat.py). What a command's end becomes is
decided in grainchain/_async/commands.py, as for every provider.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from grainchain._acompat import AsyncLock, arun_blocking, arun_to_end, aselect, awritable
from grainchain._output import OutputCollector, Stream
from grainchain.errors import StdinClosedError
from grainchain.providers.local._hostproc import HostProcess

CHUNK = 65536
# After the shell exits, a background child it left may keep the pipes open; stop reading then.
DRAIN_GRACE = 0.05
POLL_TICK = 0.02  # only where the kernel has no pidfd
# A writer to a command's stdin waits for room this long at a time, then lets a close_stdin() in
STDIN_TICK = 0.05


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


class HostRun:
    """A host process started for a command (grainchain/_async/commands.py's CommandRun). Its id is the
    value of its exec marker; `sandbox_pid` maps its host pid to the one its sandbox knows it by (isolated
    sandboxes: nsenter forks the command into the pid namespace)."""

    def __init__(self, child: HostProcess, sandbox_pid: Callable[[int], int] | None = None) -> None:
        self.child = child
        self.id = child.marker.partition("=")[2]
        self._sandbox_pid = sandbox_pid
        # held around each wait-and-write on the stdin pipe and around closing it, so that a close from
        # another thread never lets a write reach a reused descriptor number
        self._stdin_lock = AsyncLock()

    async def pid(self) -> int | None:
        if self._sandbox_pid is None:
            return self.child.pid
        return await arun_blocking(self._sandbox_pid, self.child.pid)  # it reads /proc

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        return await pump(self.child, output, deadline)

    async def stop(self, output: OutputCollector) -> None:
        await _stop(self.child, output)

    async def signal(self) -> None:
        await arun_blocking(self.child.signal_tree)  # the pump sees the exit, drains and reaps

    async def exit_code(self) -> int:
        return _exit_code(self.child)

    async def abandon(self) -> int | None:
        # a /proc scan and a wait, off the event loop; done even when the caller is cancelled (again)
        await arun_to_end(self.child.kill_tree)
        return _exit_code(self.child)

    async def close(self) -> None:
        async with self._stdin_lock:
            await arun_to_end(self.child.close)  # three close() calls: off the loop too, and always done

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            async with self._stdin_lock:
                pipe = self.child.popen.stdin
                if pipe is None or pipe.closed:
                    raise StdinClosedError("the command's standard input was closed", provider="local")
                if not await awritable(pipe.fileno(), STDIN_TICK):
                    continue
                try:
                    view = view[os.write(pipe.fileno(), view) :]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise StdinClosedError(
                        "the command no longer reads its standard input (it ended or closed it)",
                        provider="local",
                    ) from None

    async def close_stdin(self) -> None:
        async with self._stdin_lock:
            self.child.close_stdin()
