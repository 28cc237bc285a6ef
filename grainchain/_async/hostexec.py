"""Run host processes for the local provider: copy their output while they run, enforce deadlines and caps.

One loop (`pump`) serves both execute() and background processes; in the sync client the same loop runs in
the caller's thread or in a daemon thread (see grainchain/_acompat.py).
"""

from __future__ import annotations

import os
import time

from grainchain._acompat import AsyncTask, aselect, astart_task
from grainchain._async.process import AsyncProcessHandle
from grainchain._hostproc import HostProcess
from grainchain._output import OutputCollector, Stream
from grainchain.errors import CommandTimeoutError, OutputLimitExceededError
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


def _result(command: str, return_code: int, output: OutputCollector, started: float) -> ExecutionResult:
    return ExecutionResult(
        command=command,
        return_code=return_code,
        stdout=output.stdout,
        stderr=output.stderr,
        execution_time=time.monotonic() - started,
    )


def _exit_code(child: HostProcess) -> int:
    code = child.popen.returncode
    assert code is not None
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as shells report it


async def _stop(child: HostProcess, output: OutputCollector) -> None:
    """Kill the whole tree, then collect what it wrote before dying."""
    child.kill_tree()
    await pump(child, output, time.monotonic() + 1.0)


def _overflow_error(command: str, output: OutputCollector) -> OutputLimitExceededError:
    return OutputLimitExceededError(
        f"command {command!r} wrote more than {output.limit} bytes of output; it was killed "
        "(raise SandboxConfig.output_limit, or redirect the output to a file)",
        limit=output.limit,
        stdout=output.stdout,
        stderr=output.stderr,
    )


async def run_to_completion(
    child: HostProcess, command: str, output: OutputCollector, timeout: float | None
) -> ExecutionResult:
    """Wait for `child`; on timeout or overflow kill its tree and raise with the partial output."""
    started = time.monotonic()
    try:
        finished = await pump(child, output, None if timeout is None else started + timeout)
        if not finished:
            await _stop(child, output)
            output.finish()
            if output.overflowed:
                raise _overflow_error(command, output)
            assert timeout is not None
            raise CommandTimeoutError(
                f"command {command!r} timed out after {timeout:g}s; it was killed with all its processes",
                command=command,
                timeout=timeout,
                stdout=output.stdout,
                stderr=output.stderr,
            )
        output.finish()
        return _result(command, _exit_code(child), output, started)
    finally:
        if child.poll() is None:  # interrupted (cancelled, a callback raised …): leave nothing running
            child.kill_tree()
        child.close()


class AsyncHostProcessHandle(AsyncProcessHandle):
    """A background host process; a task copies its output until it exits or is killed."""

    def __init__(self, child: HostProcess, command: str, output: OutputCollector) -> None:
        self.command = command
        self.pid = child.pid
        self._child = child
        self._output = output
        self._started = time.monotonic()
        self._task: AsyncTask = astart_task(self._follow)

    async def _follow(self) -> None:
        try:
            if not await pump(self._child, self._output, None):  # overflow
                await _stop(self._child, self._output)
            self._child.popen.wait()
            self._output.finish()
        finally:
            self._child.close()

    @property
    def stdout(self) -> str:
        return self._output.stdout

    @property
    def stderr(self) -> str:
        return self._output.stderr

    @property
    def return_code(self) -> int | None:
        if not self._task.done():
            return None
        return _exit_code(self._child)

    async def wait(self, timeout: float | None = None) -> ExecutionResult:
        if not await self._task.join(timeout):
            assert timeout is not None
            raise CommandTimeoutError(
                f"background command {self.command!r} still runs after waiting {timeout:g}s; "
                "it was not killed (call kill())",
                command=self.command,
                timeout=timeout,
                stdout=self.stdout,
                stderr=self.stderr,
            )
        if self._output.overflowed:
            raise _overflow_error(self.command, self._output)
        return _result(self.command, _exit_code(self._child), self._output, self._started)

    async def kill(self) -> None:
        if not self._task.done():
            self._child.kill_tree()
        await self._task.join()
