"""Every `_async/` folder → its `_sync/` twin (codegen/unasync_tokens.py), with our rename tables.

Every `Async*` name must have an explicit entry here (global, or for the module it appears in), and every entry
must be used (codegen fails otherwise, keeping these lists honest). `X.aio` → `X` needs no entry.
"""

from __future__ import annotations

from codegen import unasync_tokens as tokens
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
    "ascope": "scope",
    # facade and adapters
    "AsyncSandbox": "Sandbox",
    "AsyncSandboxBase": "SandboxBase",
    "AsyncSandboxAdapter": "SandboxAdapter",
    "AsyncBackend": "Backend",
    "AsyncProcessHandle": "ProcessHandle",
    "AsyncHostProcessHandle": "HostProcessHandle",
    "AsyncLocalAdapter": "LocalAdapter",
    "AsyncLocalProcessHandle": "LocalProcessHandle",
    "AsyncDockerAdapter": "DockerAdapter",
    "AsyncDockerBackend": "DockerBackend",
    "AsyncDockerProcessHandle": "DockerProcessHandle",
    # httpx (the docker provider)
    "AsyncClient": "Client",
    "AsyncHTTPTransport": "HTTPTransport",
    "aiter_raw": "iter_raw",
    "aiter_lines": "iter_lines",
    "aread": "read",
    "aclose": "close",
}


# Renames that apply to one provider's folder only (fnmatch on the source path), e.g. an SDK's async names:
# {"grainchain/providers/morph/_async/*": {"aexec": "exec"}}. Each entry must be used there.
MODULE_REPLACEMENTS: dict[str, dict[str, str]] = {}


def unasync_tree(sources: dict[str, str]) -> dict[str, str]:
    """Map {".../_async/x.py": source} to {".../_sync/x.py": generated source, with its header}."""
    twins = tokens.unasync_tree(sources, REPLACEMENTS, MODULE_REPLACEMENTS)
    out = {}
    for rel, source_text in sources.items():
        text = twins[tokens.sync_path(rel)]
        if source_text.startswith("# GENERATED"):  # keep one header, naming the original source
            text = text.split("\n", 2)[2]
        out[tokens.sync_path(rel)] = header(rel, tool="codegen/unasync_tokens.py") + text
    return out
