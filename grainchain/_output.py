"""Collects a command's stdout/stderr: keeps the bytes, decodes them incrementally for callbacks, enforces a cap.

Shared by every adapter; thread-safe because the sync client drains background processes in a thread while
the caller reads the output so far.
"""

from __future__ import annotations

import codecs
import threading
from enum import Enum

from grainchain._types import OutputCallback
from grainchain.errors import CommandTimeoutError, MemoryLimitExceededError, OutputLimitExceededError
from grainchain.models import ExecutionResult


class Stream(Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


class OutputCollector:
    def __init__(
        self,
        *,
        limit: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> None:
        self.limit = limit
        self.overflowed = False
        self._data = {Stream.STDOUT: bytearray(), Stream.STDERR: bytearray()}
        self._callbacks = {Stream.STDOUT: on_stdout, Stream.STDERR: on_stderr}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in Stream}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self._data[Stream.STDOUT]) + len(self._data[Stream.STDERR])

    def feed(self, stream: Stream, data: bytes) -> None:
        """Add a chunk; past the limit, keep what fits and mark the collector overflowed."""
        with self._lock:
            room = self.limit - self.total
            if len(data) > room:
                data = data[: max(room, 0)]
                self.overflowed = True
            self._data[stream] += data
            callback = self._callbacks[stream]
            text = self._decoders[stream].decode(data) if callback else ""
        if text and callback:
            callback(text)

    def finish(self) -> None:
        """Flush incomplete UTF-8 sequences left in the decoders to the callbacks."""
        for stream in Stream:
            callback = self._callbacks[stream]
            if callback and (rest := self._decoders[stream].decode(b"", final=True)):
                callback(rest)

    def text(self, stream: Stream) -> str:
        with self._lock:
            return self._data[stream].decode("utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.text(Stream.STDOUT)

    @property
    def stderr(self) -> str:
        return self.text(Stream.STDERR)

    # -- what a finished, timed-out or overflowing command becomes (same words for every provider) -------

    def result(self, command: str, return_code: int, elapsed: float) -> ExecutionResult:
        return ExecutionResult(
            command=command,
            return_code=return_code,
            stdout=self.stdout,
            stderr=self.stderr,
            execution_time=elapsed,
        )

    def overflow_error(self, command: str) -> OutputLimitExceededError:
        return OutputLimitExceededError(
            f"command {command!r} wrote more than {self.limit} bytes of output; it was killed "
            "(raise SandboxConfig.output_limit, or redirect the output to a file)",
            limit=self.limit,
            stdout=self.stdout,
            stderr=self.stderr,
        )

    def timeout_error(self, command: str, timeout: float) -> CommandTimeoutError:
        return CommandTimeoutError(
            f"command {command!r} timed out after {timeout:g}s; it was killed with all its processes",
            command=command,
            timeout=timeout,
            stdout=self.stdout,
            stderr=self.stderr,
        )

    def still_running_error(self, command: str, waited: float) -> CommandTimeoutError:
        return CommandTimeoutError(
            f"background command {command!r} still runs after waiting {waited:g}s; "
            "it was not killed (call kill())",
            command=command,
            timeout=waited,
            stdout=self.stdout,
            stderr=self.stderr,
        )


def memory_limit_error(result: ExecutionResult, limit: int, provider: str) -> MemoryLimitExceededError:
    """The error for a command that failed while the kernel OOM-killed a process of the sandbox (the
    provider is named here: a background handle's wait() raises it outside the facade)."""
    return MemoryLimitExceededError(
        f"command {result.command!r} failed (exit code {result.return_code}): the kernel killed a process "
        f"of the sandbox for going over its memory limit ({limit} bytes) while it ran",
        command=result.command,
        limit=limit,
        return_code=result.return_code,
        stdout=result.stdout,
        stderr=result.stderr,
        provider=provider,
    )
