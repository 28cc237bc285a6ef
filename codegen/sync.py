"""grainchain/_async/** → grainchain/_sync/** with unasync (pinned 0.6.0), plus our renames.

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


def unasync_tree(sources: dict[str, str]) -> dict[str, str]:
    """Map {"grainchain/_async/x.py": source} to {"grainchain/_sync/x.py": generated source}."""
    unknown = sorted({m for src in sources.values() for m in _ASYNC_NAME.findall(src)} - set(REPLACEMENTS))
    if unknown:
        raise SystemExit(f"codegen: add sync names for {', '.join(unknown)} to codegen/sync.py REPLACEMENTS")
    unused = [
        name for name in REPLACEMENTS if not any(re.search(rf"\b{name}\b", src) for src in sources.values())
    ]
    if unused:
        raise SystemExit(f"codegen: unused unasync replacements (remove them): {', '.join(unused)}")
    with tempfile.TemporaryDirectory() as tmp:
        src_root = Path(tmp, "src", "_async")
        dst_root = Path(tmp, "dst", "_sync")
        for rel, text in sources.items():
            path = src_root / Path(rel).relative_to("grainchain/_async")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        # absolute paths: unasync 0.6.0 overwrites the source in place when given relative ones
        rule = unasync.Rule(
            fromdir=str(src_root) + "/", todir=str(dst_root) + "/", additional_replacements=REPLACEMENTS
        )
        unasync.unasync_files([str(p) for p in sorted(src_root.rglob("*.py"))], rules=[rule])
        out = {}
        for path in sorted(dst_root.rglob("*.py")):
            rel = path.relative_to(dst_root)
            source = f"grainchain/_async/{rel}"
            text = path.read_text()
            if sources[source].startswith("# GENERATED"):  # keep one header, naming the original source
                text = text.split("\n", 2)[2]
            out[f"grainchain/_sync/{rel}"] = header(source, tool="unasync") + text
    return out
