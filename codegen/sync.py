"""Every `_async/` folder → its `_sync/` twin with unasync (pinned 0.6.0), plus our renames.

unasync's default rule turns `AsyncFoo` into `SyncFoo`; we want `Foo`, so every `Async*` name must have an
explicit entry here, and every entry must be used (codegen fails otherwise, keeping this list honest).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import unasync

from codegen.common import header

REPLACEMENTS = {
    "_async": "_sync",
    # _acompat primitives
    "aselect": "select",
    "astart_task": "start_task",
    "AsyncTask": "Task",
    "arun_blocking": "run_blocking",
    "arun_in": "run_in",
    "AFLAVOUR": "FLAVOUR",
    # facade and adapters
    "AsyncSandbox": "Sandbox",
    "AsyncSandboxBase": "SandboxBase",
    "AsyncSandboxAdapter": "SandboxAdapter",
    "AsyncProcessHandle": "ProcessHandle",
    "AsyncHostProcessHandle": "HostProcessHandle",
    "AsyncLocalAdapter": "LocalAdapter",
    "AsyncLocalProcessHandle": "LocalProcessHandle",
    "AsyncDockerAdapter": "DockerAdapter",
    "AsyncDockerProcessHandle": "DockerProcessHandle",
    # httpx (the docker provider)
    "AsyncClient": "Client",
    "AsyncHTTPTransport": "HTTPTransport",
    "aiter_raw": "iter_raw",
    "aiter_lines": "iter_lines",
    "aread": "read",
    "aclose": "close",
}
_ASYNC_NAME = re.compile(r"\bAsync[A-Z]\w*")


def sync_path(async_path: str) -> str:
    """Where the sync twin of an async source goes: each `_async` folder has a `_sync` sibling."""
    parts = Path(async_path).parts
    if "_async" not in parts:
        raise ValueError(f"{async_path}: async sources live in an `_async` folder")
    return str(Path(*("_sync" if part == "_async" else part for part in parts)))


def unasync_tree(sources: dict[str, str]) -> dict[str, str]:
    """Map {".../_async/x.py": source} to {".../_sync/x.py": generated source}."""
    unknown = sorted({m for src in sources.values() for m in _ASYNC_NAME.findall(src)} - set(REPLACEMENTS))
    if unknown:
        raise SystemExit(f"codegen: add sync names for {', '.join(unknown)} to codegen/sync.py REPLACEMENTS")
    unused = [
        name for name in REPLACEMENTS if not any(re.search(rf"\b{name}\b", src) for src in sources.values())
    ]
    if unused:
        raise SystemExit(f"codegen: unused unasync replacements (remove them): {', '.join(unused)}")
    with tempfile.TemporaryDirectory() as tmp:
        src_root = Path(tmp, "src")
        dst_root = Path(tmp, "dst")
        for rel, text in sources.items():
            path = src_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        # absolute paths: unasync 0.6.0 overwrites the source in place when given relative ones
        rule = unasync.Rule(
            fromdir=str(src_root) + "/", todir=str(dst_root) + "/", additional_replacements=REPLACEMENTS
        )
        unasync.unasync_files([str(src_root / rel) for rel in sorted(sources)], rules=[rule])
        out = {}
        for rel, source_text in sources.items():
            text = (dst_root / rel).read_text()
            if source_text.startswith("# GENERATED"):  # keep one header, naming the original source
                text = text.split("\n", 2)[2]
            out[sync_path(rel)] = header(rel, tool="unasync") + text
    return out
