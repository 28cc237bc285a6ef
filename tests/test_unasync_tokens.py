"""codegen/unasync_tokens.py: same output as unasync 0.6.0 on our sources, plus `.aio` and per-module renames."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from codegen.unasync_tokens import sync_path, to_sync, unasync_tree

ROOT = Path(__file__).resolve().parent.parent
# async sources move around (grainchain/_async/, providers/<name>/_async/, …): take whatever exists now
_GLOBS = (
    "grainchain/**/_async/**/*.py",
    "grainchain/**/_async*.py",
    "tests/**/_async/**/*.py",
    "tests/**/_async*.py",
)
ASYNC_SOURCES = sorted(
    {str(p.relative_to(ROOT)) for g in _GLOBS for p in ROOT.glob(g) if "__pycache__" not in p.parts}
)


def _tables(rel: str, source: str) -> dict[str, str]:
    """The rename table codegen applies to the source at `rel`."""
    from codegen import sync

    table = dict(sync.REPLACEMENTS)
    modules = {**sync.provider_replacements({rel: source}), **sync.MODULE_REPLACEMENTS}
    for pattern, extra in modules.items():
        if fnmatchcase(rel, pattern):
            table.update(extra)
    return table


def _unasync(source: str, replacements: Mapping[str, str]) -> str:
    """What unasync 0.6.0 makes of one module's text (its token pass, without its file handling)."""
    unasync = pytest.importorskip("unasync")
    import tokenize_rt

    rule = unasync.Rule(fromdir="/_async/", todir="/_sync/", additional_replacements=dict(replacements))
    result: str = tokenize_rt.tokens_to_src(rule._unasync_tokens(tokenize_rt.src_to_tokens(source)))
    return result


def _drop_aio(source: str) -> str:
    """Legitimate difference: unasync keeps `X.aio`, we drop it (modal's async twins)."""
    import tokenize_rt

    tokens = tokenize_rt.src_to_tokens(source)
    keep = [
        tok
        for i, tok in enumerate(tokens)
        if not (tok.matches(name="OP", src=".") and i + 1 < len(tokens) and tokens[i + 1].src == "aio")
        and not (tok.matches(name="NAME", src="aio") and i and tokens[i - 1].matches(name="OP", src="."))
    ]
    result: str = tokenize_rt.tokens_to_src(keep)
    return result


@pytest.mark.parametrize("rel", ASYNC_SOURCES or ["<none>"])
def test_same_output_as_unasync_on_our_sources(rel: str) -> None:
    path = ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} moved away")
    source = path.read_text()
    table = _tables(rel, source)
    assert to_sync(source, table) == _drop_aio(_unasync(source, table))


SAMPLE = '''\
"""AsyncSandbox docs mention await and aclose: docstrings are left alone."""
from __future__ import annotations
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from grainchain._async.base import AsyncSandboxBase

class AsyncThing(AsyncSandboxBase):
    async def __aenter__(self) -> "AsyncThing":  # await in a comment stays
        return self
    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self
    async def __anext__(self) -> bytes:
        raise StopAsyncIteration
    async def lines(self, it: AsyncIterable[str]) -> list[str]:
        print(await self.aread(), 'aread', f"{'aread'}", r"aread", """aread""")
        async with self as a, self as b:
            return [x async for x in it] + [await y for y in ()]

@asynccontextmanager
async def opened() -> AsyncGenerator[AsyncThing, None]:
    yield AsyncThing()
'''


def test_same_output_as_unasync_on_every_feature() -> None:
    replacements = {
        "_async": "_sync",
        "AsyncThing": "Thing",
        "AsyncSandboxBase": "SandboxBase",
        "aread": "read",
    }
    replacements["aclose"] = "close"
    out = to_sync(SAMPLE, replacements)
    assert out == _unasync(SAMPLE, replacements)
    assert "async" not in out.replace('"""AsyncSandbox', "")
    assert "await" not in out.replace("mention await", "").replace("# await", "")
    assert '\'read\', f"{\'aread\'}", r"aread", """aread"""' in out  # only a plain string that is the name


def test_known_differences_from_unasync() -> None:
    # unasync turns an unmapped `AsyncFoo` into `SyncFoo`; we leave it (and unasync_tree refuses it)
    assert _unasync("x = AsyncFoo\n", {}) == "x = SyncFoo\n"
    assert to_sync("x = AsyncFoo\n", {}) == "x = AsyncFoo\n"
    # unasync drops whatever token follows `await`, assuming a space; we drop only a space
    assert _unasync("async def f():\n    return await(g())\n", {}) == "def f():\n    return g())\n"
    assert to_sync("async def f():\n    return await(g())\n", {}) == "def f():\n    return (g())\n"
    # `.aio` (modal): unasync keeps it
    assert _unasync("await sb.exec.aio('ls')\n", {}) == "sb.exec.aio('ls')\n"
    assert to_sync("await sb.exec.aio('ls')\n", {}) == "sb.exec('ls')\n"


# A modal-like SDK: every method is a plain sync callable carrying its async twin on `.aio`; streams
# iterate both ways. `calls` records which flavour ran, so a sync twin that still used `.aio` shows.
FAKE_SDK = """\
calls = []

class _Method:
    def __init__(self, name, fn):
        self._name, self._fn = name, fn
    def __call__(self, *args):
        calls.append(("sync", self._name))
        return self._fn(*args)
    async def aio(self, *args):
        calls.append(("aio", self._name))
        return self._fn(*args)

class Stream:
    def __init__(self, lines):
        self._lines = lines
    def __iter__(self):
        calls.append(("sync", "iter"))
        return iter(self._lines)
    async def __aiter__(self):
        calls.append(("aio", "iter"))
        for line in self._lines:
            yield line

class Process:
    def __init__(self, argv):
        self.stdout = Stream([" ".join(argv) + "\\n", "done\\n"])
        self.wait = _Method("wait", lambda: len(argv))

class Sandbox:
    def __init__(self):
        self.terminated = False
        self.exec = _Method("exec", lambda *argv: Process(argv))
        self.terminate = _Method("terminate", self._terminate)
    def _terminate(self):
        self.terminated = True

Sandbox.create = _Method("create", Sandbox)
"""

ASYNC_ADAPTER = """\
from __future__ import annotations

from collections.abc import AsyncIterator

import fakemodal


class AsyncModalAdapter:
    def __init__(self, sb: fakemodal.Sandbox) -> None:
        self.sb = sb

    @classmethod
    async def create(cls) -> AsyncModalAdapter:
        return cls(await fakemodal.Sandbox.create.aio())

    async def __aenter__(self) -> AsyncModalAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sb.terminate.aio()

    async def run(self, *argv: str) -> tuple[int, list[str]]:
        proc = await self.sb.exec.aio(*argv)
        lines = [line async for line in proc.stdout]
        return await proc.wait.aio(), lines

    async def stream(self, *argv: str) -> AsyncIterator[str]:
        proc = await self.sb.exec.aio(*argv)
        async for line in proc.stdout:
            yield line.upper()


async def main() -> list[object]:
    async with await AsyncModalAdapter.create() as box:
        code, lines = await box.run("echo", "hi")
        streamed = [line async for line in box.stream("ls")]
    return [code, lines, streamed, box.sb.terminated]
"""

SYNC_ADAPTER = """\
from __future__ import annotations

from collections.abc import Iterator

import fakemodal


class ModalAdapter:
    def __init__(self, sb: fakemodal.Sandbox) -> None:
        self.sb = sb

    @classmethod
    def create(cls) -> ModalAdapter:
        return cls(fakemodal.Sandbox.create())

    def __enter__(self) -> ModalAdapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sb.terminate()

    def run(self, *argv: str) -> tuple[int, list[str]]:
        proc = self.sb.exec(*argv)
        lines = [line for line in proc.stdout]
        return proc.wait(), lines

    def stream(self, *argv: str) -> Iterator[str]:
        proc = self.sb.exec(*argv)
        for line in proc.stdout:
            yield line.upper()


def main() -> list[object]:
    with ModalAdapter.create() as box:
        code, lines = box.run("echo", "hi")
        streamed = [line for line in box.stream("ls")]
    return [code, lines, streamed, box.sb.terminated]
"""


def _run(source: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[str, str]]]:
    sdk = types.ModuleType("fakemodal")
    exec(FAKE_SDK, sdk.__dict__)
    monkeypatch.setitem(sys.modules, "fakemodal", sdk)
    namespace: dict[str, Any] = {"__name__": "adapter"}
    exec(compile(source, "adapter.py", "exec"), namespace)
    result = namespace["main"]()
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return result, sdk.calls


def test_modal_aio_methods_become_the_plain_ones_and_the_twin_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    generated = to_sync(ASYNC_ADAPTER, {"AsyncModalAdapter": "ModalAdapter"})
    assert generated == SYNC_ADAPTER
    async_result, async_calls = _run(ASYNC_ADAPTER, monkeypatch)
    sync_result, sync_calls = _run(generated, monkeypatch)
    assert async_result == sync_result == [2, ["echo hi\n", "done\n"], ["LS\n", "DONE\n"], True]
    # same calls in the same order, each in its own flavour
    assert [name for _, name in async_calls] == [name for _, name in sync_calls]
    assert {flavour for flavour, _ in async_calls} == {"aio"}
    assert {flavour for flavour, _ in sync_calls} == {"sync"}


MORPH = "async def run(inst: AsyncInstance) -> str:\n    return await inst.aexec('ls')\n"


def test_per_module_renames_apply_only_to_matching_paths() -> None:
    out = unasync_tree(
        {
            "grainchain/providers/morph/_async.py": MORPH,
            "grainchain/providers/other/_async/run.py": MORPH,
        },
        {"AsyncInstance": "Instance"},
        {"grainchain/providers/morph/*": {"aexec": "exec"}},
    )
    assert out == {
        "grainchain/providers/morph/_sync.py": "def run(inst: Instance) -> str:\n    return inst.exec('ls')\n",
        "grainchain/providers/other/_sync/run.py": "def run(inst: Instance) -> str:\n    return inst.aexec('ls')\n",
    }


def test_a_per_module_name_maps_only_in_its_module() -> None:
    sources = {"pkg/e2b/_async.py": "x: AsyncSandbox\n", "pkg/daytona/_async.py": "y: AsyncSandbox\n"}
    module_replacements = {"pkg/e2b/*": {"AsyncSandbox": "Sandbox"}}
    with pytest.raises(SystemExit, match=r"AsyncSandbox \(pkg/daytona/_async.py\)") as info:
        unasync_tree(sources, {}, module_replacements)
    assert "pkg/e2b" not in str(info.value)
    del sources["pkg/daytona/_async.py"]
    assert unasync_tree(sources, {}, module_replacements) == {"pkg/e2b/_sync.py": "x: Sandbox\n"}


def test_honesty_checks() -> None:
    source = {"grainchain/_async/a.py": "async def f(x: AsyncThing) -> None:\n    await x.aclose()\n"}
    with pytest.raises(SystemExit, match="AsyncThing"):
        unasync_tree(source, {"aclose": "close"}, {})
    with pytest.raises(SystemExit, match=r"unused.*aread"):
        unasync_tree(source, {"AsyncThing": "Thing", "aclose": "close", "aread": "read"}, {})
    # a per-module rename counts as used only by sources its pattern matches
    with pytest.raises(SystemExit, match=r"unused.*aclose \(grainchain/providers/\*\)"):
        unasync_tree(source, {"AsyncThing": "Thing"}, {"grainchain/providers/*": {"aclose": "close"}})
    # unasync's built-in renames are always known and never "unused"
    assert unasync_tree({"t/_async.py": "x: AsyncIterator[int]\n"}, {}, {}) == {
        "t/_sync.py": "x: Iterator[int]\n"
    }


def test_sync_path() -> None:
    assert sync_path("grainchain/_async/x.py") == "grainchain/_sync/x.py"
    assert sync_path("grainchain/providers/modal/_async.py") == "grainchain/providers/modal/_sync.py"
    assert sync_path("tests/providers/memory/_async.py") == "tests/providers/memory/_sync.py"
    assert (
        sync_path("grainchain/providers/docker/_async/adapter.py")
        == "grainchain/providers/docker/_sync/adapter.py"
    )
    for path in ("grainchain/x.py", "grainchain/_asyncio/x.py", "grainchain/my_async.py", "_async.pyi"):
        with pytest.raises(ValueError, match="no `_async`"):
            sync_path(path)
