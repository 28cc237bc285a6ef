"""grainchain: one typed interface over sandbox providers.

    from grainchain import Sandbox            # async: `async with Sandbox() as sandbox: await sandbox.execute(...)`
    from grainchain.sync import Sandbox       # blocking: `with Sandbox() as sandbox: sandbox.execute(...)`

`grainchain.Sandbox` is `grainchain.AsyncSandbox`, as the API document promises; the blocking client has the
same methods in `grainchain.sync`.

`import grainchain` loads only the error classes: the facade and the models (pydantic, the settings, the
registry) are imported on first use of their name (`from grainchain import Sandbox` loads them), so a
program that merely imports grainchain, or only catches its errors, does not pay for them. The benchmark
(`grainchain benchmark run`) measures the import against a bare interpreter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grainchain.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendTimeoutError,
    CapabilityError,
    CommandError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    MemoryLimitExceededError,
    NotFoundError,
    OutputLimitExceededError,
    PathOutsideSandboxError,
    PermissionDeniedError,
    ProcessesRunningError,
    ProviderError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    RateLimitError,
    RemoteError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SnapshotNotFoundError,
    StdinClosedError,
)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below imports these on first use
    from grainchain._async.process import AsyncProcessHandle
    from grainchain._generated._async.sandbox import AsyncSandbox
    from grainchain._generated.features import Feature
    from grainchain._provider_info import ProviderInfo
    from grainchain.models import (
        ExecutionResult,
        FileInfo,
        SandboxConfig,
        SandboxInfo,
        SandboxStatus,
        SnapshotInfo,
        SnapshotKind,
        SupportLevel,
    )

    Sandbox = AsyncSandbox
    """The async sandbox, under the name the API document uses. Blocking code: `from grainchain.sync import Sandbox`."""

# name -> (module, attribute): the public names that are imported when first asked for
_LAZY: dict[str, tuple[str, str]] = {
    "AsyncProcessHandle": ("grainchain._async.process", "AsyncProcessHandle"),
    "AsyncSandbox": ("grainchain._generated._async.sandbox", "AsyncSandbox"),
    "Sandbox": ("grainchain._generated._async.sandbox", "AsyncSandbox"),
    "Feature": ("grainchain._generated.features", "Feature"),
    "ProviderInfo": ("grainchain._provider_info", "ProviderInfo"),
    **{
        name: ("grainchain.models", name)
        for name in (
            "ExecutionResult",
            "FileInfo",
            "SandboxConfig",
            "SandboxInfo",
            "SandboxStatus",
            "SnapshotInfo",
            "SnapshotKind",
            "SupportLevel",
        )
    },
}


def __getattr__(name: str) -> Any:
    """Import a lazily-loaded public name (PEP 562); it is then a plain module attribute."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AsyncProcessHandle",
    "AsyncSandbox",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendTimeoutError",
    "CapabilityError",
    "CommandError",
    "CommandTimeoutError",
    "ConfigurationError",
    "ExecutionResult",
    "Feature",
    "FileInfo",
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
    "ProviderInfo",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "RateLimitError",
    "RemoteError",
    "Sandbox",
    "SandboxConfig",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStatus",
    "SnapshotInfo",
    "SnapshotKind",
    "SnapshotNotFoundError",
    "StdinClosedError",
    "SupportLevel",
]
