"""Helpers shared by the local-provider tests; they work with either client as the fixtures hand it out
(the async sandbox, or the sync one wrapped by conftest.AwaitableSync so that its calls are awaited)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from grainchain import AsyncSandbox, ExecutionResult, SandboxConfig, SandboxInfo
from grainchain.providers.local._localfs import SandboxDir
from grainchain.sync import ProcessHandle
from grainchain.sync import Sandbox as SyncSandbox

FLAVOURS = ["async", "sync"]


def grainchain_script() -> str:
    """The installed `grainchain` console script (beside this Python, else on PATH)."""
    beside_python = Path(sys.executable).with_name("grainchain")
    found = str(beside_python) if beside_python.exists() else shutil.which("grainchain")
    if found is None:
        pytest.fail("the grainchain console script is not installed: pip install -e .")
    return found


class AwaitableSync:
    """The blocking client behind `await`, so one async test body checks both clients."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.flavour = "sync"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return AwaitableSync(result) if isinstance(result, ProcessHandle) else result

        return call


def flavour_of(sandbox: Any) -> str:
    return "async" if getattr(sandbox, "flavour", "") == "async" else "sync"


async def close(sandbox: Any) -> None:
    """Close a sandbox of either client."""
    if flavour_of(sandbox) == "async":
        await sandbox.aclose()
    else:
        await sandbox.close()


def new_sandbox(flavour: str, provider: str | None = None, config: SandboxConfig | None = None) -> Any:
    """A sandbox object of the given client, not started."""
    if flavour == "async":
        sandbox: Any = AsyncSandbox(provider, config)
        sandbox.flavour = "async"
        return sandbox
    return AwaitableSync(SyncSandbox(provider, config))


@asynccontextmanager
async def opened(
    flavour: str, provider: str | None = None, config: SandboxConfig | None = None
) -> AsyncIterator[Any]:
    """`async with Sandbox(...)` / `with Sandbox(...)` of the given client, as users write it."""
    if flavour == "async":
        async with AsyncSandbox(provider, config) as sandbox:
            sandbox.flavour = "async"
            yield sandbox
    else:
        with SyncSandbox(provider, config) as sync_sandbox:
            yield AwaitableSync(sync_sandbox)


async def connect(flavour: str, sandbox_id: str, provider: str | None = None) -> Any:
    if flavour == "async":
        sandbox: Any = await AsyncSandbox.connect(sandbox_id, provider)
        sandbox.flavour = "async"
        return sandbox
    return AwaitableSync(SyncSandbox.connect(sandbox_id, provider))


async def list_sandboxes(flavour: str, provider: str | None = None) -> list[SandboxInfo]:
    if flavour == "async":
        return await AsyncSandbox.list_sandboxes(provider)
    return SyncSandbox.list_sandboxes(provider)


async def run_ok(sandbox: Any, command: str) -> ExecutionResult:
    """Run a command that must succeed."""
    result: ExecutionResult = await sandbox.execute(command)
    assert result.return_code == 0, f"{command!r} failed ({result.return_code}): {result.stderr}"
    return result


async def workspace_of(sandbox: Any) -> Path:
    """The host directory the sandbox's commands start in (its workspace unless working_directory is set).
    An isolated local sandbox sees its workspace at /workspace: that maps to its directory in the state dir."""
    seen = (await run_ok(sandbox, "pwd")).stdout.strip()
    if seen != "/workspace" and not seen.startswith("/workspace/"):
        return Path(seen)
    state = Path(os.environ["GRAINCHAIN_STATE_DIR"]).resolve()
    return SandboxDir(state, sandbox.sandbox_id).workspace / seen[len("/workspace/") :]


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a filesystem snapshot must keep, per entry below `root`: type, permission bits, content
    digest or link target, and mtime (ns) of files and directories."""
    state: dict[str, tuple[Any, ...]] = {".": ("dir", stat.S_IMODE(root.stat().st_mode))}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", mode, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[rel] = ("file", mode, digest, st.st_mtime_ns)
            else:
                state[rel] = ("special", stat.S_IFMT(st.st_mode), mode)
    return state
