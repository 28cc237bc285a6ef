"""Every error grainchain raises.

    GrainchainError
    ├── ConfigurationError            bad SandboxConfig / settings / config file; an image it cannot get;
    │                                 a limit the provider cannot honour (also a ValueError)
    ├── InvalidArgumentError          bad argument to an operation (also a ValueError)
    ├── ProviderNotFoundError         unknown provider name (lists the known ones)
    ├── ProviderUnavailableError      provider's SDK or backend is missing (says what to install)
    ├── AuthenticationError
    ├── CapabilityError               the provider does not support the feature (names who does)
    ├── NotFoundError                 something named by id or path does not exist
    │   ├── SandboxNotFoundError
    │   ├── SnapshotNotFoundError
    │   └── FileNotFoundInSandboxError    (also a FileNotFoundError)
    ├── SandboxNotRunningError        closed or terminated sandbox
    ├── ProcessesRunningError         restore_snapshot(..., if_processes_running="refuse") with processes
    │                                 running (lists them; nothing was changed)
    ├── StdinClosedError              a process's stdin is not open (started without it, closed, or it ended)
    ├── PathOutsideSandboxError       escapes the sandbox by `..` or a symlink (also a PermissionError)
    ├── PermissionDeniedError         the sandbox refuses the access, as it would a command's: a read-only
    │                                 mount, file permissions (also a PermissionError)
    ├── CommandError                  a command did not end normally; carries its output so far (text, bytes)
    │   ├── CommandTimeoutError           ran past its timeout (also a TimeoutError)
    │   ├── OutputLimitExceededError      output over SandboxConfig.output_limit
    │   └── MemoryLimitExceededError      killed for going over SandboxConfig.memory_limit
    ├── RemoteError                   the backend was not reachable or asked to wait: retryable
    │   ├── BackendConnectionError        no connection, or it broke (also a ConnectionError)
    │   ├── BackendTimeoutError           the backend did not answer in time (also a TimeoutError)
    │   └── RateLimitError                carries retry_after (seconds) when the backend said
    └── ProviderError                 anything else the provider reported; the original is `__cause__`

Each carries `provider` and `operation` (filled in by the facade when the adapter did not) and
`retryable`: True (trying again may work), False (it will not) or None (unknown).
A non-zero exit code is not an error: it is an ExecutionResult with `success == False`.
A provider's internal "not found" (an engine's image, volume, exec...) is never a SandboxNotFoundError:
that one means the sandbox itself is gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict, Unpack


class ErrorContext(TypedDict, total=False):
    """Where an error happened; every error accepts these keywords."""

    provider: str | None
    operation: str | None
    retryable: bool | None


class GrainchainError(Exception):
    """Base of every grainchain error."""

    retryable: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        operation: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.operation = operation
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        where = ", ".join(
            f"{key}={value}"
            for key, value in (("provider", self.provider), ("operation", self.operation))
            if value
        )
        return f"{self.message} [{where}]" if where else self.message


class ConfigurationError(GrainchainError, ValueError):
    """The configuration (SandboxConfig, environment, config file) is invalid, or asks what the provider cannot
    honour here. Also a ValueError, as pydantic's ValidationError was before SandboxConfig raised this."""

    retryable = False


class InvalidArgumentError(GrainchainError, ValueError):
    """An argument of an operation is invalid; the message names it and what is accepted."""

    retryable = False

    def __init__(self, message: str, *, argument: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(message, **context)
        self.argument = argument


class ProviderNotFoundError(GrainchainError):
    """No provider is registered under this name."""

    retryable = False

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.known = sorted(known)
        super().__init__(
            f"unknown provider {name!r}; known providers: {', '.join(self.known) or '(none)'}",
            provider=name,
        )


class ProviderUnavailableError(GrainchainError):
    """The provider is known but cannot be used here (SDK not installed, backend missing)."""

    retryable = False


class AuthenticationError(GrainchainError):
    """The provider rejected the credentials, or none were found."""

    retryable = False


class CapabilityError(GrainchainError):
    """The provider does not support a feature. Raised before the provider is called."""

    retryable = False

    def __init__(
        self,
        feature: str,
        provider: str,
        *,
        operation: str | None = None,
        supported_by: Iterable[str] = (),
        hint: str | None = None,
    ) -> None:
        self.feature = feature
        self.supported_by = sorted(supported_by)
        self.hint = hint
        message = f"provider {provider!r} does not support {feature!r}"
        if self.supported_by:
            message += f"; providers that do: {', '.join(self.supported_by)}"
        if hint:
            message += f" ({hint})"
        super().__init__(message, provider=provider, operation=operation)


class NotFoundError(GrainchainError):
    """Something named by id or path does not exist: a sandbox, a snapshot, a file in the sandbox.

    `except NotFoundError` catches all three; a provider's own internal "not found" (an image, volume or
    exec of its backend) is mapped to the error that describes it for the user, never to these blindly."""

    retryable = False


class SandboxNotFoundError(NotFoundError):
    """No sandbox with this id exists (any more): the sandbox itself, not something a provider uses for it."""

    retryable = False


class SandboxNotRunningError(GrainchainError):
    """The sandbox is closed, terminated or not started yet."""

    retryable = False


class ProcessesRunningError(GrainchainError):
    """restore_snapshot(..., if_processes_running="refuse") found processes running in the sandbox, which a
    restore would end; nothing was changed. `processes` describes them (e.g. "pid 12: sleep 100")."""

    retryable = False

    def __init__(self, processes: Iterable[str], **context: Unpack[ErrorContext]) -> None:
        self.processes = list(processes)
        shown = "; ".join(self.processes[:10]) + ("; ..." if len(self.processes) > 10 else "")
        super().__init__(
            f"{len(self.processes)} process(es) run in the sandbox and a restore would end them: {shown} "
            '(kill them first, or pass if_processes_running="kill")',
            **context,
        )


class StdinClosedError(GrainchainError):
    """A background process's standard input cannot be written: the process was started without
    `stdin=True`, close_stdin() closed it, or the process ended (or closed its stdin)."""

    retryable = False

    def __init__(self, message: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(message, **context)


class CommandError(GrainchainError):
    """A command did not end normally: it ran past its timeout, wrote too much or went over the memory
    limit. Carries what it wrote so far as text (`stdout`, `stderr`) and as bytes (`stdout_bytes`,
    `stderr_bytes`: None only from a provider whose SDK hands over decoded text only)."""

    stdout: str = ""
    stderr: str = ""
    stdout_bytes: bytes | None = None
    stderr_bytes: bytes | None = None


class CommandTimeoutError(CommandError, TimeoutError):
    """A command ran longer than its timeout; it was killed with all its processes."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        command: str,
        timeout: float,
        stdout: str = "",
        stderr: str = "",
        stdout_bytes: bytes | None = None,
        stderr_bytes: bytes | None = None,
        **context: Unpack[ErrorContext],
    ) -> None:
        super().__init__(message, **context)
        self.command = command
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_bytes = stdout_bytes
        self.stderr_bytes = stderr_bytes


class OutputLimitExceededError(CommandError):
    """A command wrote more output than SandboxConfig.output_limit; it was killed."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        limit: int,
        stdout: str = "",
        stderr: str = "",
        stdout_bytes: bytes | None = None,
        stderr_bytes: bytes | None = None,
        **context: Unpack[ErrorContext],
    ) -> None:
        super().__init__(message, **context)
        self.limit = limit
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_bytes = stdout_bytes
        self.stderr_bytes = stderr_bytes


class MemoryLimitExceededError(CommandError):
    """A command failed because the kernel killed a process of the sandbox for going over
    SandboxConfig.memory_limit while it ran; carries the output so far and the exit code."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        command: str,
        limit: int,
        return_code: int,
        stdout: str = "",
        stderr: str = "",
        stdout_bytes: bytes | None = None,
        stderr_bytes: bytes | None = None,
        **context: Unpack[ErrorContext],
    ) -> None:
        super().__init__(message, **context)
        self.command = command
        self.limit = limit
        self.return_code = return_code
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_bytes = stdout_bytes
        self.stderr_bytes = stderr_bytes


class FileNotFoundInSandboxError(NotFoundError, FileNotFoundError):
    """The path does not exist in the sandbox."""

    retryable = False

    def __init__(self, path: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(f"no such file or directory in the sandbox: {path!r}", **context)
        self.path = path


class PathOutsideSandboxError(GrainchainError, PermissionError):
    """The path leaves the sandbox (by `..`, an absolute path elsewhere, or a symlink)."""

    retryable = False

    def __init__(self, path: str, reason: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(f"path {path!r} is outside the sandbox: {reason}", **context)
        self.path = path


class PermissionDeniedError(GrainchainError, PermissionError):
    """The path is in the sandbox, but the sandbox refuses this access to it, as it would refuse a command's:
    a read-only mount (EROFS), file permissions, a file the kernel will not let anyone write. `reason` is
    what the backend said."""

    retryable = False

    def __init__(self, path: str, reason: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(f"permission denied in the sandbox for {path!r}: {reason}", **context)
        self.path = path
        self.reason = reason


class SnapshotNotFoundError(NotFoundError):
    """No snapshot with this id exists for the provider."""

    retryable = False

    def __init__(self, snapshot_id: str, **context: Unpack[ErrorContext]) -> None:
        super().__init__(f"no snapshot with id {snapshot_id!r}", **context)
        self.snapshot_id = snapshot_id


class RemoteError(GrainchainError):
    """The backend of a provider could not be reached, did not answer in time, or asked us to wait:
    nothing was wrong with the request, so trying it again later may work."""

    retryable = True


class BackendConnectionError(RemoteError, ConnectionError):
    """No connection to the provider's backend could be made, or it broke during a call; the message says
    where it tried and what to check (is the service running, the address or socket path)."""


class BackendTimeoutError(RemoteError, TimeoutError):
    """The provider's backend did not answer in time (the call itself, not a command in the sandbox: that
    is CommandTimeoutError)."""


class RateLimitError(RemoteError):
    """The provider asked us to slow down; `retry_after` is how many seconds it asked us to wait, when it
    said (a Retry-After header), else None."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, **context: Unpack[ErrorContext]
    ) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after


class ProviderError(GrainchainError):
    """The provider failed in a way no other error describes; the original exception is `__cause__`."""


__all__ = [
    "AuthenticationError",
    "BackendConnectionError",
    "BackendTimeoutError",
    "CapabilityError",
    "CommandError",
    "CommandTimeoutError",
    "ConfigurationError",
    "FileNotFoundInSandboxError",
    "GrainchainError",
    "InvalidArgumentError",
    "MemoryLimitExceededError",
    "NotFoundError",
    "OutputLimitExceededError",
    "PathOutsideSandboxError",
    "PermissionDeniedError",
    "ProcessesRunningError",
    "ProviderError",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RemoteError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SnapshotNotFoundError",
    "StdinClosedError",
]
