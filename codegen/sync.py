"""Every `_async/` folder → its `_sync/` twin (codegen/unasync_tokens.py), with our rename tables.

Every `Async*` name must have an explicit entry here (global, or for the module it appears in), and every entry
must be used (codegen fails otherwise, keeping these lists honest). `X.aio` → `X` needs no entry.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from codegen import unasync_tokens as tokens
from codegen.common import ROOT, header

REPLACEMENTS = {
    "_async": "_sync",
    # _acompat primitives
    "aselect": "select",
    "awritable": "writable",
    "astart_task": "start_task",
    "AsyncTask": "Task",
    "arun_blocking": "run_blocking",
    "arun_in": "run_in",
    "arun_to_end": "run_to_end",
    "AFLAVOUR": "FLAVOUR",
    "ascope": "scope",
    "asleep": "sleep",
    "AsyncEvent": "Event",
    "AsyncLock": "Lock",
    "afail_after": "fail_after",
    # facade and adapters
    "AsyncSandbox": "Sandbox",
    "AsyncSandboxBase": "SandboxBase",
    "AsyncSandboxAdapter": "SandboxAdapter",
    "AsyncBackend": "Backend",
    "AsyncProcessHandle": "ProcessHandle",
    "aclose": "close",
}


# Renames that apply to some files only (fnmatch on the source path). A provider's folder brings its own,
# so that adding a provider touches nothing here: every `class AsyncFoo` defined in its `_async/` maps to
# `Foo` there, and its `__init__.py` may set `SYNC_RENAMES = {...}` (a literal, read without importing it)
# for its SDK's names, e.g. {"aexec": "exec"} for morph, {"AsyncClient": "Client"} for httpx. Each entry
# must be used there.
MODULE_REPLACEMENTS: dict[str, dict[str, str]] = {}
_PROVIDER_FOLDER = re.compile(r"^((?:grainchain|tests)/providers/[^/]+)/_async/")


def provider_replacements(sources: dict[str, str]) -> dict[str, dict[str, str]]:
    """{"<provider>/_async/*": renames} for every provider folder among the sources."""
    found: dict[str, dict[str, str]] = {}
    for rel, text in sorted(sources.items()):
        folder = _PROVIDER_FOLDER.match(rel)
        if folder is None:
            continue
        pattern = f"{folder.group(1)}/_async/*"
        if pattern not in found:
            package = ROOT / folder.group(1) / "__init__.py"
            found[pattern] = _declared_renames(package) if package.is_file() else {}
        found[pattern].update(dict(re.findall(r"^class (Async([A-Z]\w*))\b", text, re.MULTILINE)))
    return found


def _declared_renames(package: Path) -> dict[str, str]:
    rel = package.relative_to(ROOT)
    for node in ast.parse(package.read_text(), str(rel)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "SYNC_RENAMES" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            if not (isinstance(value, dict) and all(isinstance(x, str) for x in [*value, *value.values()])):
                raise SystemExit(f"codegen: {rel}: SYNC_RENAMES must be a dict of str to str")
            return dict(value)
    return {}


def unasync_tree(sources: dict[str, str]) -> dict[str, str]:
    """Map {".../_async/x.py": source} to {".../_sync/x.py": generated source, with its header}."""
    module_replacements = {**provider_replacements(sources), **MODULE_REPLACEMENTS}
    twins = tokens.unasync_tree(sources, REPLACEMENTS, module_replacements)
    out = {}
    for rel, source_text in sources.items():
        text = twins[tokens.sync_path(rel)]
        if source_text.startswith("# GENERATED"):  # keep one header, naming the original source
            text = text.split("\n", 2)[2]
        out[tokens.sync_path(rel)] = header(rel, tool="codegen/unasync_tokens.py") + text
    return out
