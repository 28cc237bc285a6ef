"""Where the modal adapter meets the modal SDK: its exceptions mapped into grainchain's tree.

Modal's SDK keeps one API for both clients: `await sb.exec.aio(...)` in the async adapter is
`sb.exec(...)` in its generated blocking twin (codegen drops `.aio`), so no hand-written call pairs are
needed here. The SDK is imported only here and in the adapters, which the registry imports on first use of
the provider: `import grainchain` never imports modal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpclib.exceptions
import modal.exception as mx

from grainchain.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeoutError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    SandboxNotFoundError,
)
from grainchain.providers._translate import Translator

PROVIDER = "modal"
# The tags that mark a Modal sandbox as grainchain's and name it: a restore or a wake-up makes a new Modal
# sandbox, the grainchain id stays.
TAG_SANDBOX = "grainchain_sandbox_id"
TAG_CONFIG = "grainchain_config"
TAG_CREATED = "grainchain_created"  # seconds since the epoch
WORKSPACE = "/workspace"

T = TypeVar("T")
ACall = Callable[[], Awaitable[T]]  # an SDK call to make (again): the async client's form
Call = Callable[
    [], T
]  # the blocking client's  # the default working directory grainchain gives a Modal sandbox


def mapped(
    exc: BaseException, what: str, *, path: str | None = None, sandbox: str | None = None
) -> GrainchainError:
    """The grainchain error for an exception the SDK (or its transport) raised while doing `what`."""
    if isinstance(exc, GrainchainError):
        return exc
    message = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
    context: dict[str, Any] = {"provider": PROVIDER}
    if isinstance(exc, mx.SandboxFilesystemPermissionError) and path is not None:  # the sandbox's refusal
        return PermissionDeniedError(path, str(exc) or "permission denied", **context)
    if isinstance(exc, (mx.AuthError, mx.PermissionDeniedError)):
        hint = "check MODAL_TOKEN_ID / MODAL_TOKEN_SECRET or provider_config token_id / token_secret"
        return AuthenticationError(f"{message} ({hint})", retryable=False, **context)
    if isinstance(exc, mx.ResourceExhaustedError):
        return RateLimitError(f"{message} (the SDK's retries ran out)", **context)
    if isinstance(exc, mx.SandboxFilesystemNotFoundError) and path is not None:
        return FileNotFoundInSandboxError(path, **context)
    if isinstance(exc, (mx.SandboxFilesystemIsADirectoryError, mx.SandboxFilesystemNotADirectoryError)):
        return InvalidArgumentError(message, argument="path", **context)
    if isinstance(exc, mx.SandboxFilesystemPathAlreadyExistsError):
        return InvalidArgumentError(message, argument="path", **context)
    if isinstance(exc, (mx.SandboxTerminatedError, mx.NotFoundError)):
        name = sandbox or "the sandbox"
        return SandboxNotFoundError(f"{name} is gone ({message})", **context)
    if isinstance(exc, (mx.TimeoutError, TimeoutError)):  # (modal's own TimeoutError is not the builtin)
        return BackendTimeoutError(message, **context)
    if isinstance(
        exc, (mx.ServiceError, mx.ConnectionError, ConnectionError, grpclib.exceptions.StreamTerminatedError)
    ):
        return BackendConnectionError(message, **context)
    if isinstance(exc, mx.InternalError):
        return ProviderError(message, retryable=True, **context)
    if isinstance(exc, (mx.InvalidError, mx.ConflictError)):
        return InvalidArgumentError(message, argument="path" if path is not None else "config", **context)
    return ProviderError(message, **context)


# what the SDK raises (its errors share modal.exception.Error) and what leaks through it from the transport
SDK_ERRORS = (mx.Error, grpclib.exceptions.GRPCError, grpclib.exceptions.StreamTerminatedError, OSError)


translated = Translator(SDK_ERRORS, mapped)
