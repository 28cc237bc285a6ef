"""Where the e2b adapter meets the e2b SDK: its exceptions mapped into grainchain's tree, and the few calls
whose async and blocking forms differ by more than `await` (the psycopg `_acompat` pattern: each pair is
written here by hand, and the provider's SYNC_RENAMES turn the async name into the blocking one when
`python -m codegen` writes ../_sync/ from ../_async/).

The SDK is imported only here and in the adapters, which the registry imports on first use of the
provider: `import grainchain` never imports e2b.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import e2b
import httpx
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from grainchain.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeoutError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    ProviderError,
    RateLimitError,
    SandboxNotFoundError,
)
from grainchain.providers._translate import Translator

PROVIDER = "e2b"
# The metadata that marks a sandbox as grainchain's and names it: E2B gives a new sandbox id to a sandbox
# made from a snapshot, the grainchain id stays.
META_SANDBOX = "grainchain_sandbox_id"
META_CONFIG = "grainchain_config"
HOME = "/home/user"  # the working directory of E2B's templates

Feed = Callable[[str], None]
RawFeed = Callable[[bytes], None]
T = TypeVar("T")
ACall = Callable[[], Awaitable[T]]  # an SDK call to make (again): the async client's form
Call = Callable[[], T]  # the blocking client's


class OutputOverflow(Exception):
    """Raised by an output callback once the output cap is hit: it ends the SDK's wait for the command,
    which keeps running until the adapter kills it."""


def exit_code(code: int, error: str | None) -> int:
    """envd reports a process killed by a signal as exit -1 with Go's name of the signal ("signal:
    killed"): 128 + N, as a shell says it."""
    if code == -1 and error:
        match = re.search(r"signal: ([a-z0-9 /()-]+)", error)
        if match is not None:
            name = match.group(1).strip()
            number = _GO_SIGNALS.get(name)
            if number is None and name.startswith("signal ") and name[7:].isdigit():
                number = int(name[7:])  # Go's name of a signal without one (real-time signals)
            if number is not None:
                return 128 + number
    return code


# Go's names of Linux signals (syscall.Signal.String(), which envd's exit error quotes)
_GO_SIGNALS = {
    name: number
    for number, name in enumerate(
        [
            "hangup",
            "interrupt",
            "quit",
            "illegal instruction",
            "trace/breakpoint trap",
            "aborted",
            "bus error",
            "floating point exception",
            "killed",
            "user defined signal 1",
            "segmentation fault",
            "user defined signal 2",
            "broken pipe",
            "alarm clock",
            "terminated",
            "stack fault",
            "child exited",
            "continued",
            "stopped (signal)",
            "stopped",
            "stopped (tty input)",
            "stopped (tty output)",
            "urgent I/O condition",
            "CPU time limit exceeded",
            "file size limit exceeded",
            "virtual timer expired",
            "profiling timer expired",
            "window changed",
            "I/O possible",
            "power failure",
            "bad system call",
        ],
        start=1,
    )
}


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    # envd's HTTP API (/files) answers an unmapped status as SandboxException("503: message")
    match = re.match(r"([1-5][0-9][0-9]): ", str(exc)) if type(exc) is e2b.SandboxException else None
    return int(match.group(1)) if match else None


def mapped(
    exc: BaseException, what: str, *, path: str | None = None, sandbox: str | None = None
) -> GrainchainError:
    """The grainchain error for an exception the SDK (or its transport) raised while doing `what`."""
    message = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
    context: dict[str, Any] = {"provider": PROVIDER}
    if isinstance(exc, GrainchainError):
        return exc
    if isinstance(exc, e2b.AuthenticationException) or _status(exc) in (401, 403):
        return AuthenticationError(
            f"{message} (check E2B_API_KEY or provider_config['api_key'])", retryable=False, **context
        )
    if isinstance(exc, e2b.RateLimitException) or _status(exc) == 429:
        return RateLimitError(f"{message} (the SDK's retries ran out)", **context)
    if isinstance(exc, e2b.FileNotFoundException) and path is not None:
        return FileNotFoundInSandboxError(path, **context)
    if isinstance(exc, (e2b.SandboxNotFoundException, e2b.SandboxNotRunningException)):
        name = sandbox or "the sandbox"
        return SandboxNotFoundError(f"{name} is gone ({message})", **context)
    if isinstance(exc, e2b.InvalidArgumentException):
        return InvalidArgumentError(message, argument="path" if path is not None else "arguments", **context)
    # (a timeout first: httpx's timeouts are transport errors too)
    if isinstance(exc, (e2b.TimeoutException, httpx.TimeoutException, TimeoutError)) and not isinstance(
        exc, e2b.SandboxUnreachableException
    ):
        return BackendTimeoutError(message, **context)
    if isinstance(exc, (e2b.SandboxUnreachableException, e2b.ServiceBusyException, httpx.TransportError)):
        return BackendConnectionError(message, **context)
    status = _status(exc)
    if status in (502, 503, 504):  # a gateway or the service is unavailable: asked to wait
        return BackendConnectionError(message, **context)
    if status is not None and status >= 500:
        return ProviderError(message, retryable=True, **context)
    if isinstance(exc, ConnectionError):
        return BackendConnectionError(message, **context)
    if isinstance(exc, ConnectError):  # envd's Connect-RPC error that the SDK let through (a broken stream)
        if exc.code is Code.UNAVAILABLE:
            return BackendConnectionError(message, **context)
        if exc.code is Code.DEADLINE_EXCEEDED:
            return BackendTimeoutError(message, **context)
    return ProviderError(message, **context)


# what the SDK raises (its own exceptions do not share one base) and what leaks through it from transports
SDK_ERRORS = (
    e2b.SandboxException,
    e2b.AuthenticationException,
    e2b.ServiceBusyException,
    httpx.HTTPError,
    OSError,  # ConnectionError and TimeoutError of the pyqwest transports
    ConnectError,  # envd's Connect-RPC errors the SDK does not wrap (a connection reset mid-call)
)


translated = Translator(SDK_ERRORS, mapped)


def fail(exc: BaseException, what: str, **where: Any) -> NoReturn:
    raise mapped(exc, what, **where) from exc


# -- commands: the async SDK takes the output callbacks when a command starts, the blocking one when it is
# waited for ----------------------------------------------------------------------------------------------


async def astart_command(
    sandbox: e2b.AsyncSandbox,
    command: str,
    *,
    cwd: str,
    envs: dict[str, str] | None,
    timeout: float,
    on_stdout: Feed,
    on_stderr: Feed,
    stdin: bool = False,
) -> e2b.AsyncCommandHandle[None]:
    return await sandbox.commands.run(
        command,
        background=True,
        cwd=cwd,
        envs=envs,
        timeout=timeout,
        stdin=stdin or None,  # None, not False: an older envd refuses stdin=False
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        retain_output=False,  # the collector keeps the output: no second copy in the SDK
    )


def start_command(
    sandbox: e2b.Sandbox,
    command: str,
    *,
    cwd: str,
    envs: dict[str, str] | None,
    timeout: float,
    on_stdout: Feed,
    on_stderr: Feed,
    stdin: bool = False,
) -> e2b.CommandHandle[None]:
    return sandbox.commands.run(
        command,
        background=True,
        cwd=cwd,
        envs=envs,
        timeout=timeout,
        stdin=stdin or None,
        retain_output=False,
    )


class _RawTee:
    """Stands in for a command handle's UTF-8 decoder of one stream: the SDK hands it envd's raw chunks;
    it passes them on as bytes and gives the SDK no text (the collector decodes, once)."""

    def __init__(self, feed: RawFeed) -> None:
        self._feed = feed

    def decode(self, data: bytes, final: bool = False) -> str:
        if data:
            self._feed(bytes(data))
        return ""


def tee_raw_output(
    handle: e2b.AsyncCommandHandle[None] | e2b.CommandHandle[None], stdout: RawFeed, stderr: RawFeed
) -> bool:
    """Route the bytes a command writes to `stdout` / `stderr` before the SDK decodes them: the SDK only
    hands over decoded text, but decodes each stream with its handle's `_stdout_decoder` /
    `_stderr_decoder` (a codecs incremental decoder). False, changing nothing, when this SDK version has
    no such decoders (the output then comes as text only). Called before the handle reads any event: the
    async handle's reader task runs at the caller's next await, the blocking one's in wait()."""
    decoders = ("_stdout_decoder", "_stderr_decoder")
    if not all(hasattr(getattr(handle, name, None), "decode") for name in decoders):
        return False
    handle._stdout_decoder = _RawTee(stdout)  # type: ignore[assignment]
    handle._stderr_decoder = _RawTee(stderr)  # type: ignore[assignment]
    return True


async def await_command(handle: e2b.AsyncCommandHandle[None], on_stdout: Feed, on_stderr: Feed) -> None:
    """Until the command ends (CommandExitException for a non-zero exit, as the SDK raises it)."""
    await handle.wait()


def wait_command(handle: e2b.CommandHandle[None], on_stdout: Feed, on_stderr: Feed) -> None:
    handle.wait(on_stdout=on_stdout, on_stderr=on_stderr)


async def adisconnect(handle: e2b.AsyncCommandHandle[None]) -> None:
    await handle.disconnect()


def disconnect(handle: e2b.CommandHandle[None]) -> None:
    handle.disconnect()
