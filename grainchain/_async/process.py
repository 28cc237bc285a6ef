"""The handle of a background process, as every adapter returns it from start_process()."""

from __future__ import annotations

from grainchain.models import ExecutionResult


class AsyncProcessHandle:
    """A command running in the background. Its output is collected as it arrives (and capped)."""

    command: str
    pid: int

    @property
    def stdout(self) -> str:
        """Standard output so far."""
        raise NotImplementedError

    @property
    def stderr(self) -> str:
        """Standard error so far."""
        raise NotImplementedError

    @property
    def return_code(self) -> int | None:
        """The exit code once the process has exited, else None."""
        raise NotImplementedError

    @property
    def is_running(self) -> bool:
        return self.return_code is None

    async def wait(self, timeout: float | None = None) -> ExecutionResult:
        """Wait for the exit and return the result. After `timeout` seconds raise CommandTimeoutError and
        leave the process running (call kill() to stop it)."""
        raise NotImplementedError

    async def kill(self) -> None:
        """Kill the process and all its descendants; a no-op once it has exited."""
        raise NotImplementedError
