"""Collects a command's stdout/stderr: keeps the bytes, decodes them incrementally for callbacks, enforces a cap.

One copy of the output: the bytes, in a BytesIO whose getvalue() hands over its buffer without copying
(a later write copies it); the text is decoded from them when asked for (once, for a finished command).

Shared by every adapter; thread-safe because the sync client drains background processes in a thread while
the caller reads the output so far.
"""

from __future__ import annotations

import codecs
import io
import threading
from enum import Enum
from typing import NamedTuple

from grainchain._types import OutputCallback
from grainchain.errors import CommandTimeoutError, MemoryLimitExceededError, OutputLimitExceededError
from grainchain.models import ExecutionResult


class Stream(Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


class Output(NamedTuple):
    stdout: str
    stderr: str
    stdout_bytes: bytes | None
    stderr_bytes: bytes | None


class OutputCollector:
    def __init__(
        self,
        *,
        limit: int,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        raw: bool = True,
    ) -> None:
        self.limit = limit
        self.overflowed = False
        # False: the provider's SDK hands over decoded text only, fed here re-encoded (for the cap and the
        # text); those bytes are not what the command wrote, so stdout_bytes/stderr_bytes say None
        self.raw = raw
        self._data = {stream: io.BytesIO() for stream in Stream}
        self._total = 0
        self._callbacks = {Stream.STDOUT: on_stdout, Stream.STDERR: on_stderr}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in Stream}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Bytes kept, stdout plus stderr: what the limit counts."""
        return self._total

    def feed(self, stream: Stream, data: bytes) -> None:
        """Add a chunk; past the limit, keep what fits and mark the collector overflowed."""
        with self._lock:
            room = self.limit - self.total
            if len(data) > room:
                data = data[: max(room, 0)]
                self.overflowed = True
            self._data[stream].write(data)
            self._total += len(data)
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

    def _bytes(self, stream: Stream) -> bytes:
        with self._lock:
            return self._data[stream].getvalue()

    def text(self, stream: Stream) -> str:
        return self._bytes(stream).decode("utf-8", errors="replace")

    def raw_bytes(self, stream: Stream) -> bytes | None:
        """The bytes the command wrote so far; None when the provider handed over decoded text only."""
        return self._bytes(stream) if self.raw else None

    @property
    def stdout(self) -> str:
        return self.text(Stream.STDOUT)

    @property
    def stderr(self) -> str:
        return self.text(Stream.STDERR)

    def _both(self, stream: Stream) -> tuple[str, bytes | None]:
        data = self._bytes(stream)
        return data.decode("utf-8", errors="replace"), data if self.raw else None

    def output(self) -> Output:
        """stdout, stderr and their bytes, as the result and the errors take them (each decoded once)."""
        stdout, stdout_bytes = self._both(Stream.STDOUT)
        stderr, stderr_bytes = self._both(Stream.STDERR)
        return Output(stdout, stderr, stdout_bytes, stderr_bytes)

    # -- what a finished, timed-out or overflowing command becomes (same words for every provider) -------

    def result(self, command: str, return_code: int, elapsed: float) -> ExecutionResult:
        return ExecutionResult(
            command=command,
            return_code=return_code,
            execution_time=elapsed,
            **self.output()._asdict(),
        )

    def overflow_error(self, command: str) -> OutputLimitExceededError:
        return OutputLimitExceededError(
            f"command {command!r} wrote more than {self.limit} bytes of output; it was killed "
            "(raise SandboxConfig.output_limit, or redirect the output to a file)",
            limit=self.limit,
            **self.output()._asdict(),
        )

    def timeout_error(self, command: str, timeout: float) -> CommandTimeoutError:
        return CommandTimeoutError(
            f"command {command!r} timed out after {timeout:g}s; it was killed with all its processes",
            command=command,
            timeout=timeout,
            **self.output()._asdict(),
        )

    def still_running_error(self, command: str, waited: float) -> CommandTimeoutError:
        return CommandTimeoutError(
            f"background command {command!r} still runs after waiting {waited:g}s; "
            "it was not killed (call kill())",
            command=command,
            timeout=waited,
            **self.output()._asdict(),
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
        stdout_bytes=result.stdout_bytes,
        stderr_bytes=result.stderr_bytes,
        provider=provider,
    )
