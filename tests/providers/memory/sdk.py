"""A fake cloud-sandbox SDK for grainchain's tests, shaped like modal's: every method of `Client` is a blocking
call that carries its async twin on `.aio`.

    client.run(box_id, "echo hi")              # blocks (time.sleep for `sleep`)
    await client.run.aio(box_id, "echo hi")    # awaits (asyncio.sleep for `sleep`)

The memory adapter (`_async/adapter.py`) is written once against the async twins; codegen turns `X.aio` into
`X`, so its sync twin (`_sync/adapter.py`) calls the blocking methods. `CALLS` counts every call by flavour
and method, so a test can tell which ran.

Behind the client is the "service": every box of this process, kept at class level, so that any client
reaches any box (connect, list). A box is a tree of files and directories in a dict; a snapshot is a copy
of that dict. `run` interprets a tiny command language, commands joined by `;` (run in order, like `sh`):

    echo WORDS [>&2] [> FILE | >> FILE]     cat FILE     pwd     printenv NAME
    true     false     sleep SECONDS     exit N     anything else: exit status 127, as `sh` says it
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import posixpath
import shlex
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

CALLS: Counter[tuple[str, str]] = Counter()  # ("sync" | "aio", method name) -> calls


class NotFound(Exception):
    """No such box, snapshot or path."""


class Invalid(Exception):
    """The request makes no sense for what is there (writing to a directory, a relative path)."""


class Timeout(Exception):
    """`run` went past its timeout; the output so far comes along."""

    def __init__(self, after: float, stdout: bytes, stderr: bytes) -> None:
        super().__init__(f"timed out after {after:g} s")
        self.after, self.stdout, self.stderr = after, stdout, stderr


# -- a method with its async twin on .aio -------------------------------------------------------------------


class _Call(Generic[P, R]):
    """One bound SDK method: call it to block, `await method.aio(...)` for its async twin. A body that is a
    generator yields the seconds it waits (the blocking call sleeps them, the twin awaits them)."""

    def __init__(self, name: str, body: Callable[P, Any]) -> None:
        self._name = name
        self._body = body

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        CALLS["sync", self._name] += 1
        steps = self._body(*args, **kwargs)
        if not inspect.isgenerator(steps):
            return steps  # type: ignore[no-any-return]
        while True:
            try:
                delay = next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            time.sleep(delay)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        CALLS["aio", self._name] += 1
        steps = self._body(*args, **kwargs)
        if not inspect.isgenerator(steps):
            return steps  # type: ignore[no-any-return]
        while True:
            try:
                delay = next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            await asyncio.sleep(delay)


class method(Generic[P, R]):  # (lower case: a decorator, like property)
    def __init__(self, fn: Callable[Concatenate[Any, P], R | Generator[float, None, R]]) -> None:
        self._fn = fn

    def __get__(self, client: Any, owner: type | None = None) -> _Call[P, R]:
        return _Call(self._fn.__name__, functools.partial(self._fn, client))


# -- what the service keeps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    data: bytes | None  # None: a directory
    mode: int
    mtime: datetime


@dataclass
class _Box:
    box_id: str
    labels: dict[str, str]
    created_at: datetime
    tree: dict[str, Entry]  # absolute path -> entry; "/" is always there
    state: str = "running"  # running | stopped (closed, kept) | terminated


@dataclass(frozen=True)
class BoxInfo:
    box_id: str
    labels: dict[str, str]
    created_at: datetime
    state: str


@dataclass(frozen=True)
class Stat:
    path: str
    size: int
    is_dir: bool
    mode: int
    mtime: datetime


@dataclass(frozen=True)
class SnapshotMeta:
    snapshot_id: str
    box_id: str
    created_at: datetime
    size: int
    tree: dict[str, Entry] = field(repr=False, compare=False)


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class _Service:
    boxes: ClassVar[dict[str, _Box]] = {}
    snapshots: ClassVar[dict[str, SnapshotMeta]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()  # the async twins run on another thread's loop


def reset() -> None:
    """Forget every box, snapshot and counted call (between tests)."""
    with _Service.lock:
        _Service.boxes.clear()
        _Service.snapshots.clear()
    CALLS.clear()


def _now() -> datetime:
    return datetime.now(UTC)


def _norm(path: str) -> str:
    if not path.startswith("/"):
        raise Invalid(f"box paths are absolute: {path!r}")
    normal = posixpath.normpath(path)  # `..` above / stays at /: nothing leaves a box
    return "/" + normal.lstrip("/")


def _box(box_id: str) -> _Box:
    try:
        return _Service.boxes[box_id]
    except KeyError:
        raise NotFound(f"no box {box_id!r}") from None


def _info(box: _Box) -> BoxInfo:
    return BoxInfo(box.box_id, dict(box.labels), box.created_at, box.state)


def _stat(path: str, entry: Entry) -> Stat:
    size = 0 if entry.data is None else len(entry.data)
    return Stat(path, size, entry.data is None, entry.mode, entry.mtime)


def _make_dirs(tree: dict[str, Entry], path: str) -> None:
    parts = [p for p in path.split("/") if p]
    for depth in range(1, len(parts) + 1):
        here = "/" + "/".join(parts[:depth])
        entry = tree.get(here)
        if entry is None:
            tree[here] = Entry(None, 0o755, _now())
        elif entry.data is not None:
            raise Invalid(f"{here!r} is a file")


def _write(tree: dict[str, Entry], path: str, data: bytes, append: bool) -> None:
    entry = tree.get(path)
    if entry is not None and entry.data is None:
        raise Invalid(f"{path!r} is a directory")
    if append and entry is not None and entry.data is not None:
        data = entry.data + data
    tree[path] = Entry(data, entry.mode if entry else 0o644, _now())


class Client:
    """A connection to the service (nothing to close). Paths are absolute paths inside the box."""

    # -- boxes --

    @method
    def create_box(self, workdir: str, labels: dict[str, str]) -> str:
        box_id = f"mem-{uuid.uuid4().hex[:12]}"
        tree = {"/": Entry(None, 0o755, _now())}
        _make_dirs(tree, _norm(workdir))
        with _Service.lock:
            _Service.boxes[box_id] = _Box(box_id, dict(labels), _now(), tree)
        return box_id

    @method
    def get_box(self, box_id: str) -> BoxInfo:
        return _info(_box(box_id))

    @method
    def list_boxes(self) -> list[BoxInfo]:
        with _Service.lock:
            return [_info(box) for box in _Service.boxes.values()]

    @method
    def set_state(self, box_id: str, state: str) -> None:
        _box(box_id).state = state

    @method
    def delete_box(self, box_id: str) -> None:
        with _Service.lock:
            if _Service.boxes.pop(box_id, None) is None:
                raise NotFound(f"no box {box_id!r}")

    # -- commands --

    @method
    def run(
        self, box_id: str, command: str, *, cwd: str, env: dict[str, str], timeout: float | None = None
    ) -> Generator[float, None, RunResult]:
        box = _box(box_id)
        cwd = _norm(cwd)
        if cwd not in box.tree or box.tree[cwd].data is not None:
            raise NotFound(f"no directory {cwd!r}")
        out = {1: bytearray(), 2: bytearray()}
        spent, code = 0.0, 0
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";>&")
        lexer.whitespace_split = True
        words = list(lexer)
        commands: list[list[str]] = [[]]
        for word in words:
            if word == ";":
                commands.append([])
            else:
                commands[-1].append(word)
        for argv in filter(None, commands):
            name, args = argv[0], argv[1:]
            if name == "exit":
                return RunResult(int(args[0]) % 256 if args else code, bytes(out[1]), bytes(out[2]))
            if name == "sleep":
                seconds = float(args[0])
                if timeout is not None and spent + seconds > timeout:
                    yield max(0.0, timeout - spent)
                    raise Timeout(timeout, bytes(out[1]), bytes(out[2]))
                yield seconds
                spent += seconds
                code = 0
            elif name == "echo":
                code = self._echo(box, cwd, args, out)
            elif name == "cat":
                path = _norm(posixpath.join(cwd, args[0]))
                entry = box.tree.get(path)
                if entry is None or entry.data is None:
                    out[2] += f"cat: {args[0]}: No such file or directory\n".encode()
                    code = 1
                else:
                    out[1] += entry.data
                    code = 0
            elif name == "pwd":
                out[1] += f"{cwd}\n".encode()
                code = 0
            elif name == "printenv":
                code = 0 if args and args[0] in env else 1
                if code == 0:
                    out[1] += f"{env[args[0]]}\n".encode()
            elif name in ("true", "false"):
                code = int(name == "false")
            else:
                out[2] += f"sh: {name}: not found\n".encode()
                code = 127
        return RunResult(code, bytes(out[1]), bytes(out[2]))

    @staticmethod
    def _echo(box: _Box, cwd: str, args: list[str], out: dict[int, bytearray]) -> int:
        stream, target, append = 1, None, False
        words: list[str] = []
        rest = iter(args)
        for word in rest:
            if word == ">&":
                stream = int(next(rest, "1"))
            elif word in (">", ">>"):
                target, append = next(rest, ""), word == ">>"
            else:
                words.append(word)
        text = (" ".join(words) + "\n").encode()
        if target is None:
            out[stream] += text
            return 0
        path = _norm(posixpath.join(cwd, target))
        parent = box.tree.get(posixpath.dirname(path))
        if parent is None or parent.data is not None:
            out[2] += f"sh: cannot create {target}: Directory nonexistent\n".encode()
            return 2
        try:
            _write(box.tree, path, text, append)
        except Invalid:
            out[2] += f"sh: cannot create {target}: Is a directory\n".encode()
            return 2
        return 0

    # -- files --

    @method
    def write(self, box_id: str, path: str, data: bytes, *, append: bool = False) -> None:
        tree = _box(box_id).tree
        path = _norm(path)
        _make_dirs(tree, posixpath.dirname(path))
        _write(tree, path, data, append)

    @method
    def read(self, box_id: str, path: str) -> bytes:
        entry = _box(box_id).tree.get(_norm(path))
        if entry is None:
            raise NotFound(path)
        if entry.data is None:
            raise Invalid(f"{path!r} is a directory")
        return entry.data

    @method
    def stat(self, box_id: str, path: str) -> Stat:
        path = _norm(path)
        entry = _box(box_id).tree.get(path)
        if entry is None:
            raise NotFound(path)
        return _stat(path, entry)

    @method
    def listdir(self, box_id: str, path: str) -> list[Stat]:
        tree = _box(box_id).tree
        path = _norm(path)
        entry = tree.get(path)
        if entry is None:
            raise NotFound(path)
        if entry.data is not None:
            return [_stat(path, entry)]
        return [
            _stat(child, tree[child])
            for child in sorted(tree)
            if child != path and posixpath.dirname(child) == path
        ]

    @method
    def remove(self, box_id: str, path: str) -> None:
        tree = _box(box_id).tree
        path = _norm(path)
        if path not in tree or path == "/":
            raise NotFound(path)
        for child in [p for p in tree if p == path or p.startswith(path + "/")]:
            del tree[child]

    @method
    def mkdir(self, box_id: str, path: str) -> None:
        _make_dirs(_box(box_id).tree, _norm(path))

    # -- snapshots: copies of the tree --

    @method
    def snapshot(self, box_id: str) -> str:
        box = _box(box_id)
        tree = dict(box.tree)  # entries are frozen: a shallow copy is a copy
        size = sum(len(e.data) for e in tree.values() if e.data is not None)
        meta = SnapshotMeta(f"memsnap-{uuid.uuid4().hex[:12]}", box_id, _now(), size, tree)
        with _Service.lock:
            _Service.snapshots[meta.snapshot_id] = meta
        return meta.snapshot_id

    @method
    def restore(self, box_id: str, snapshot_id: str) -> None:
        box = _box(box_id)
        try:
            box.tree = dict(_Service.snapshots[snapshot_id].tree)
        except KeyError:
            raise NotFound(snapshot_id) from None

    @method
    def list_snapshots(self, box_id: str) -> list[SnapshotMeta]:
        with _Service.lock:
            return [replace(s) for s in _Service.snapshots.values() if s.box_id == box_id]

    @method
    def drop_snapshot(self, snapshot_id: str) -> None:
        with _Service.lock:
            if _Service.snapshots.pop(snapshot_id, None) is None:
                raise NotFound(snapshot_id)
