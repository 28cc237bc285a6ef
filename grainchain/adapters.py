"""The public API for provider authors: everything an adapter needs, async and blocking, from one module.

    from grainchain.adapters import AsyncBackend, AsyncCommandRun, AsyncSandboxAdapter, ProviderConfig

Each async name has its blocking twin here under the name the sync code generator gives it
(`AsyncSandboxAdapter` → `SandboxAdapter`, `AsyncCommandRun` → `CommandRun`, `arun_blocking` →
`run_blocking` ...), so an adapter written once, async, and turned into its twin by renaming
(codegen/unasync_tokens.py) imports from this same module in both flavours. docs/writing-a-provider.md
shows how they fit together. Anything of grainchain's not exported here or by `grainchain` itself is private
(`grainchain._*`) and may change in any release.

The spec as data is here too, for the conformance suite and tools: `load_spec()`, and which operation,
SandboxConfig field or nothing (informational) gates each Feature.
"""

from __future__ import annotations

from grainchain._acompat import (
    AFLAVOUR,
    FLAVOUR,
    AsyncEvent,
    AsyncLock,
    AsyncTask,
    Deadline,
    Event,
    Lock,
    Task,
    afail_after,
    arun_blocking,
    asleep,
    astart_task,
    fail_after,
    run_blocking,
    sleep,
    start_task,
)
from grainchain._async.adapter import ANY_SNAPSHOT, AsyncSandboxAdapter
from grainchain._async.backend import AsyncBackend
from grainchain._async.commands import CommandRun as AsyncCommandRun
from grainchain._async.process import AsyncProcessHandle
from grainchain._checks import start_directory
from grainchain._commands import EXEC_MARKER, SANDBOX_MARKER
from grainchain._generated.features import (
    CONFIG_REQUIREMENTS,
    INFORMATIONAL_FEATURES,
    OPERATION_FEATURES,
    Feature,
)
from grainchain._generated.spec import load_spec
from grainchain._output import OutputCollector, Stream
from grainchain._provider_config import OpenProviderConfig, ProviderConfig
from grainchain._provider_info import ProviderInfo
from grainchain._sync.adapter import SandboxAdapter
from grainchain._sync.backend import Backend
from grainchain._sync.commands import CommandRun
from grainchain._sync.process import ProcessHandle
from grainchain._types import BYTE_SIZE_FORMS, OutputCallback, ResourceBounds, parse_byte_size
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
from grainchain.registry import register, unregister
from grainchain.settings import Settings

SYNC_NAMES: dict[str, str] = {
    "AsyncSandboxAdapter": "SandboxAdapter",
    "AsyncBackend": "Backend",
    "AsyncCommandRun": "CommandRun",
    "AsyncProcessHandle": "ProcessHandle",
    "AsyncEvent": "Event",
    "AsyncLock": "Lock",
    "AsyncTask": "Task",
    "AFLAVOUR": "FLAVOUR",
    "afail_after": "fail_after",
    "arun_blocking": "run_blocking",
    "asleep": "sleep",
    "astart_task": "start_task",
    "aclose": "close",
}
"""Each async name of this module (and the adapter's `aclose`) → its blocking twin, for a provider's build
that generates its `_sync/` from its `_async/` by renaming."""

__all__ = [
    "AFLAVOUR",
    "ANY_SNAPSHOT",
    "BYTE_SIZE_FORMS",
    "CONFIG_REQUIREMENTS",
    "EXEC_MARKER",
    "FLAVOUR",
    "INFORMATIONAL_FEATURES",
    "OPERATION_FEATURES",
    "SANDBOX_MARKER",
    "SYNC_NAMES",
    "AsyncBackend",
    "AsyncCommandRun",
    "AsyncEvent",
    "AsyncLock",
    "AsyncProcessHandle",
    "AsyncSandboxAdapter",
    "AsyncTask",
    "Backend",
    "CommandRun",
    "Deadline",
    "Event",
    "ExecutionResult",
    "Feature",
    "FileInfo",
    "Lock",
    "OpenProviderConfig",
    "OutputCallback",
    "OutputCollector",
    "ProcessHandle",
    "ProviderConfig",
    "ProviderInfo",
    "ResourceBounds",
    "SandboxAdapter",
    "SandboxConfig",
    "SandboxInfo",
    "SandboxStatus",
    "Settings",
    "SnapshotInfo",
    "SnapshotKind",
    "Stream",
    "SupportLevel",
    "Task",
    "afail_after",
    "arun_blocking",
    "asleep",
    "astart_task",
    "fail_after",
    "load_spec",
    "parse_byte_size",
    "register",
    "run_blocking",
    "sleep",
    "start_directory",
    "start_task",
    "unregister",
]
