"""The handle of a background process, as every adapter returns it from start_process()."""

from __future__ import annotations

import contextlib
import time

from grainchain._acompat import AsyncTask, astart_task
from grainchain._output import OutputCollector
from grainchain.models import ExecutionResult


class AsyncProcessHandle:
    """A command running in the background. Its output is collected as it arrives (and capped).

    Adapters subclass it with `_follow` (copy the output until the process ends, then `_exited(code)`) and
    `_signal` (kill the process tree; `_follow` then sees the end). Everything else is shared.
    """

    def __init__(self, command: str, pid: int, output: OutputCollector) -> None:
        self.command = command
        self.pid = pid
        self._output = output
        self._started = time.monotonic()
        self._elapsed = 0.0
        self._code: int | None = None
        self._task: AsyncTask = astart_task(self._follow)

    async def _follow(self) -> None:
        raise NotImplementedError

    async def _signal(self) -> None:
        raise NotImplementedError

    def _exited(self, code: int) -> None:
        self._code = code
        self._elapsed = time.monotonic() - self._started
        self._output.finish()

    @property
    def stdout(self) -> str:
        """Standard output so far."""
        return self._output.stdout

    @property
    def stderr(self) -> str:
        """Standard error so far."""
        return self._output.stderr

    @property
    def return_code(self) -> int | None:
        """The exit code once the process has ended (-1 when it could not be learnt), else None."""
        if not self._task.done():
            return None
        return -1 if self._code is None else self._code

    @property
    def is_running(self) -> bool:
        return self.return_code is None

    async def wait(self, timeout: float | None = None) -> ExecutionResult:
        """Wait for the exit and return the result. After `timeout` seconds raise CommandTimeoutError and
        leave the process running (call kill() to stop it)."""
        if not await self._task.join(timeout):
            assert timeout is not None
            raise self._output.still_running_error(self.command, timeout)
        if self._output.overflowed:
            raise self._output.overflow_error(self.command)
        code = self.return_code
        return self._output.result(self.command, -1 if code is None else code, self._elapsed)

    async def kill(self) -> None:
        """Kill the process and all its descendants; a no-op once it has exited."""
        if not self._task.done():
            await self._signal()
        with contextlib.suppress(Exception):  # a callback's error is for wait() to report, not kill()
            await self._task.join()
