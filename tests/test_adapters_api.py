"""grainchain.adapters, the public API for provider authors: the guide, the memory test provider and the
conformance package use it and no private module of grainchain."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import grainchain.adapters as adapters

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-provider.md"
PRIVATE = re.compile(r"\bgrainchain\._[A-Za-z]")  # `grainchain._async.adapter`, not the words `grainchain._*`


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def _private_imports(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, where)):
        modules = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found += [f"{where}:{node.lineno}: {m}" for m in modules if m.startswith("grainchain._")]
    return found


def test_the_guide_names_no_private_module() -> None:
    text = GUIDE.read_text()
    assert not [line for line in text.splitlines() if PRIVATE.search(line)]
    blocks = _python_blocks(text)
    assert blocks, "the guide has no python examples any more?"
    for block in blocks:
        assert not _private_imports(block, "writing-a-provider.md")


def test_what_the_guide_imports_from_grainchain_adapters_exists() -> None:
    names = []
    for block in _python_blocks(GUIDE.read_text()):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "grainchain.adapters":
                names += [alias.name for alias in node.names]
    assert "AsyncSandboxAdapter" in names
    assert [name for name in names if not hasattr(adapters, name)] == []


@pytest.mark.parametrize("folder", ["tests/providers/memory", "conformance/grainchain_conformance"])
def test_the_memory_provider_and_the_conformance_suite_import_only_public_modules(folder: str) -> None:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        found += _private_imports(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


def test_everything_exported_exists_and_each_async_name_has_its_blocking_twin() -> None:
    assert [name for name in adapters.__all__ if not hasattr(adapters, name)] == []
    from grainchain._async.adapter import AsyncSandboxAdapter
    from grainchain._sync.adapter import SandboxAdapter
    from grainchain._sync.commands import CommandRun

    assert adapters.AsyncSandboxAdapter is AsyncSandboxAdapter
    assert adapters.SandboxAdapter is SandboxAdapter
    assert adapters.CommandRun is CommandRun  # the blocking protocol, not the async one
    assert adapters.AsyncCommandRun is not adapters.CommandRun
    for async_name, sync_name in adapters.SYNC_NAMES.items():
        if async_name == "aclose":  # a method: the adapters' own
            assert hasattr(adapters.AsyncSandboxAdapter, "aclose")
            assert hasattr(adapters.SandboxAdapter, "close")
            continue
        assert async_name in adapters.__all__, async_name
        assert sync_name in adapters.__all__, sync_name
    asyncs = {name for name in adapters.__all__ if re.match(r"Async[A-Z]|a[a-z]+_|AFLAVOUR|asleep", name)}
    assert asyncs <= set(adapters.SYNC_NAMES), asyncs - set(adapters.SYNC_NAMES)


def test_a_provider_built_on_the_public_api_works(memory_provider: Any) -> None:
    """The memory provider (written against grainchain.adapters only) runs through the blocking client."""
    from grainchain.sync import Sandbox

    memory_provider()
    with Sandbox("memory") as sandbox:
        sandbox.upload_file("hello.txt", "hi")
        assert sandbox.download_file("hello.txt") == b"hi"
