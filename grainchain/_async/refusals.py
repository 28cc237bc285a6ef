"""Whether the sandbox refuses its commands a write at a path: for adapters whose backend reports a refused
file operation only as a generic failure (an SDK's "operation failed", an engine's "not found" for a mount
it does not reach). convention:paths promises PermissionDeniedError exactly where a command is refused too,
so the adapter asks a command, only after the backend failed (nothing is paid on success)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from grainchain.errors import GrainchainError, PermissionDeniedError

if TYPE_CHECKING:
    from grainchain._async.adapter import AsyncSandboxAdapter

REFUSED = 13
# The nearest existing directory at or above $1 takes a new entry from a command, or exit 13 (refused:
# a read-only mount, permissions, procfs) / 20 (a file is in the way). A real write: busybox's `test -w`
# is true for root even on a read-only mount.
PROBE_SCRIPT = r"""d="$1"; while [ -n "$d" ] && [ ! -e "$d" ]; do d="${d%/*}"; done
[ -n "$d" ] || d=/; [ -d "$d" ] || exit 20
t="$d/.grainchain-probe-$$"; ( : > "$t" ) 2>/dev/null || exit 13; rm -f -- "$t" """


async def refused_to_commands(adapter: AsyncSandboxAdapter, directory: str) -> bool:
    """Whether a command of the sandbox may not create an entry in `directory` (or the nearest directory
    above it that exists). False when the probe itself fails: the caller's own error stands then."""
    command = f"sh -c {shlex.quote(PROBE_SCRIPT)} sh {shlex.quote(directory)}"
    try:
        result = await adapter.execute(command, timeout=30)
    except GrainchainError:  # the probe is a second opinion only
        return False
    return result.return_code == REFUSED


async def refusal(
    adapter: AsyncSandboxAdapter, path: str, directory: str, error: GrainchainError, provider: str
) -> GrainchainError:
    """PermissionDeniedError for `path` when commands are refused in `directory` too, else `error`."""
    if await refused_to_commands(adapter, directory):
        return PermissionDeniedError(path, f"commands may not write in {directory} either", provider=provider)
    return error
