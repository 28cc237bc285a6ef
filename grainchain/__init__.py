"""grainchain: one typed interface over sandbox providers.

    from grainchain import Sandbox            # async: `async with Sandbox() as sandbox: await sandbox.execute(...)`
    from grainchain.sync import Sandbox       # blocking: `with Sandbox() as sandbox: sandbox.execute(...)`

`grainchain.Sandbox` is `grainchain.AsyncSandbox`, as the API document promises; the blocking client has the
same methods in `grainchain.sync`.
"""

from grainchain._async.process import AsyncProcessHandle
from grainchain._async.sandbox import AsyncSandbox
from grainchain._generated.features import Feature
from grainchain._provider_info import ProviderInfo
from grainchain.errors import (
    AuthenticationError,
    CapabilityError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    MemoryLimitExceededError,
    OutputLimitExceededError,
    PathOutsideSandboxError,
    ProviderError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    RateLimitError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SnapshotNotFoundError,
)
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

__version__ = "0.1.0"

__all__ = [
    "AsyncProcessHandle",
    "AsyncSandbox",
    "AuthenticationError",
    "CapabilityError",
    "CommandTimeoutError",
    "ConfigurationError",
    "ExecutionResult",
    "Feature",
    "FileInfo",
    "FileNotFoundInSandboxError",
    "GrainchainError",
    "InvalidArgumentError",
    "MemoryLimitExceededError",
    "OutputLimitExceededError",
    "PathOutsideSandboxError",
    "ProviderError",
    "ProviderInfo",
    "ProviderNotFoundError",
    "ProviderUnavailableError",
    "RateLimitError",
    "Sandbox",
    "SandboxConfig",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStatus",
    "SnapshotInfo",
    "SnapshotKind",
    "SnapshotNotFoundError",
    "SupportLevel",
]
