"""The handle of a background process, as every adapter returns it from start_process()."""

from __future__ import annotations

import contextlib
import time

from grainchain._acompat import AsyncTask, astart_task
from grainchain._async.commands import STDIN_CHUNK, CommandRun, OomWatch, finish_command
from grainchain._checks import check_content, check_positive, no_limit
from grainchain._output import OutputCollector, Stream
from grainchain.errors import StdinClosedError
from grainchain.models import ExecutionResult


class AsyncProcessHandle:
    """A command running in the background. Its output is collected as it arrives (and capped).

    `id` names the process for good (a string: a provider's process or exec id); `pid` is its process id
    where the provider has one (None otherwise). A task follows the adapter's CommandRun until the command
    ends; nothing here is provider-specific.
    """

    def __init__(
        self,
        command: str,
        run: CommandRun,
        output: OutputCollector,
        *,
        pid: int | None = None,
        oom: OomWatch | None = None,
        started: float | None = None,
        stdin: bool = False,
    ) -> None:
        self.command = command
        self.id: str = run.id
        self.pid: int | None = pid
        self._run = run
        self._output = output
        self._oom = oom
        # when the start began (time.monotonic()): execution_time counts from there, as execute()'s does
        self._started = time.monotonic() if started is None else started
        self._elapsed = 0.0
        self._code: int | None = None
        # why write_stdin cannot write, once it cannot (None: stdin is open)
        self._stdin_closed: str | None = None if stdin else "it was started without stdin=True"
        self._task: AsyncTask = astart_task(self._follow)

    async def _follow(self) -> None:
        """The only code that reads the output, reaps the command and closes the run; kill() just signals."""
        settled = False
        try:
            if not await self._run.pump(self._output, None):  # overflow
                await self._run.stop(self._output)
            settled = True
            self._exited(await self._run.exit_code())
        finally:
            try:
                if not settled:  # a callback raised, or the task was cancelled: leave nothing running
                    self._code = await self._run.abandon()
            finally:
                await self._run.close()

    async def _signal(self) -> None:
        await self._run.signal()

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
    def stdout_bytes(self) -> bytes | None:
        """Standard output so far as the bytes the process wrote (None: the provider's SDK hands over
        decoded text only)."""
        return self._output.raw_bytes(Stream.STDOUT)

    @property
    def stderr_bytes(self) -> bytes | None:
        """Standard error so far as bytes (None where stdout_bytes is)."""
        return self._output.raw_bytes(Stream.STDERR)

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
        """Wait for the exit and return the result, or raise as execute() would (OutputLimitExceededError,
        MemoryLimitExceededError). After `timeout` seconds raise CommandTimeoutError and leave the process
        running (call kill() to stop it). `timeout`: seconds as execute() takes them (math.inf: no limit)."""
        check_positive("wait", "timeout", timeout)
        if not await self._task.join(no_limit(timeout)):
            assert timeout is not None
            raise self._output.still_running_error(self.command, timeout)
        code = self.return_code
        return await finish_command(
            self.command, self._output, -1 if code is None else code, self._elapsed, oom=self._oom
        )

    async def write_stdin(self, data: str | bytes) -> None:
        """Write `data` (str as UTF-8, or bytes) to the process's standard input, after what earlier calls
        wrote; waits while the process does not read. StdinClosedError when the process was started without
        stdin=True, after close_stdin(), or once the process has ended (or closed its stdin)."""
        check_content("write_stdin", "data", data)
        if self._stdin_closed is None and not self.is_running:
            self._stdin_closed = "the process has ended"
        if self._stdin_closed is not None:
            raise StdinClosedError(
                f"cannot write to the standard input of process {self.id!r}: {self._stdin_closed}",
                operation="write_stdin",
            )
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        for start in range(0, len(payload), STDIN_CHUNK):  # pieces every provider's calls can carry
            await self._run.write_stdin(payload[start : start + STDIN_CHUNK])

    async def close_stdin(self) -> None:
        """End the process's standard input (it reads end of file); idempotent, also once it has ended."""
        if self._stdin_closed is None:
            self._stdin_closed = "close_stdin() closed it"
            if self.is_running:
                await self._run.close_stdin()

    async def kill(self) -> None:
        """Kill the process and all its descendants; a no-op once it has exited."""
        if not self._task.done():
            await self._signal()
        with contextlib.suppress(Exception):  # a callback's error is for wait() to report, not kill()
            await self._task.join()
