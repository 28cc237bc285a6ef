"""File operations and tree copies of the local provider walk the sandbox's files by directory descriptors
(grainchain/providers/local/_confined.py), so that a command swapping a directory for a symlink at any moment can never make
them act on a host path.

* semantics: the walk follows links as the sandbox sees them (relative targets spliced in, absolute ones as
  sandbox paths, `..` popping our own stack), refuses links out, counts links, leaves a final link alone when
  asked to, and reports a symlink as a directory only when it leads to one inside the sandbox;
* deterministic races: a hook swaps a directory (or a file) for a symlink to a host canary exactly between
  two steps of a walk, a copy or a removal; the canary must stay untouched and unread;
* a real race: a process in a sandbox exchanging `d` with a symlink (renameat2 RENAME_EXCHANGE) while
  upload_file/download_file work on `d/...`: no escape, only typed errors;
* tree copies keep what a snapshot must keep (hard links, pipes, whiteouts, xattrs, owners, holes, times).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from grainchain import (
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    SandboxConfig,
)
from grainchain.providers.local import _confined as confined
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.sync import Sandbox

ISOLATED_ROOT = "/workspace"
_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two entries atomically (renameat2 RENAME_EXCHANGE), as an attacker in the sandbox does."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Canary:
    """A host directory outside the workspace that nothing may read, write or delete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        (root / "secret").write_bytes(b"HOST SECRET")
        (root / "victim").write_text("host victim")
        (root / "only-on-host").mkdir()
        (root / "only-on-host" / "host-file").write_text("a removal that follows a link deletes me")
        (root / "listed").mkdir()
        (root / "listed" / "host-only-name").write_text("")
        self.before = self.state()

    def state(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames:
                found[os.path.join(dirpath, name)] = "dir"
            for name in filenames:
                found[os.path.join(dirpath, name)] = Path(dirpath, name).read_bytes()
        return found

    def untouched(self) -> bool:
        return self.state() == self.before


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary(tmp_path / "canary")


@pytest.fixture(params=["isolated", "host"])
def view(request: pytest.FixtureRequest, tmp_path: Path) -> confined.View:
    """A workspace seen at /workspace (isolated) or at its host path (isolation "none")."""
    host = tmp_path / "ws"
    host.mkdir()
    return confined.View(host, ISOLATED_ROOT if request.param == "isolated" else str(host))


def sandbox_path(view: confined.View, rel: str) -> str:
    return f"{view.root}/{rel}"


# -- semantics ------------------------------------------------------------------------------------------


def test_links_inside_are_followed_as_the_sandbox_sees_them(view: confined.View) -> None:
    ws = view.host
    (ws / "real" / "sub").mkdir(parents=True)
    (ws / "real" / "data.txt").write_text("data")
    (ws / "alias").symlink_to("real")  # relative
    (ws / "absolute").symlink_to(sandbox_path(view, "real"))  # a sandbox path, not a host one
    (ws / "real" / "sub" / "up").symlink_to("../data.txt")  # `..` from a link target pops our stack
    (ws / "real" / "back").symlink_to("..")

    root = view.root
    assert confined.read_file(view, root, "alias/data.txt") == b"data"
    assert confined.read_file(view, root, "absolute/data.txt") == b"data"
    assert confined.read_file(view, root, "real/sub/up") == b"data"
    assert confined.read_file(view, root, "real/back/alias/data.txt") == b"data"
    assert confined.read_file(view, f"{root}/real", "data.txt") == b"data"  # relative to the cwd
    confined.write_file(view, root, "absolute/new.txt", b"via link", append=False)
    assert (ws / "real" / "new.txt").read_bytes() == b"via link"
    confined.make_directory(view, root, "alias/made/deeper")
    assert (ws / "real" / "made" / "deeper").is_dir()
    # the user's own `..` is lexical: `alias/..` is the directory holding alias, not real's parent
    assert {i.name for i in confined.list_directory(view, root, "real/sub/..")} >= {"sub", "data.txt"}
    assert {i.name for i in confined.list_directory(view, root, "alias/..")} == {
        "real",
        "alias",
        "absolute",
    }
    host, shown = confined.directory(view, root, "absolute/sub")
    assert (host, shown) == (ws / "real" / "sub", f"{root}/absolute/sub")


def test_links_out_are_refused(view: confined.View, canary: Canary) -> None:
    ws = view.host
    (ws / "d").mkdir()
    (ws / "host").symlink_to(canary.root)  # a host path: outside /workspace, and outside the host root
    (ws / "d" / "up").symlink_to("../..")  # above the workspace
    (ws / "slash").symlink_to("/")
    (ws / "secret").symlink_to(canary.root / "secret")
    root = view.root
    for path in ["host/secret", "d/up/canary/secret", "slash/etc/passwd", "secret"]:
        with pytest.raises(PathOutsideSandboxError):
            confined.read_file(view, root, path)
        with pytest.raises(PathOutsideSandboxError):
            confined.write_file(view, root, path, b"pwned", append=True)
        with pytest.raises(PathOutsideSandboxError):
            confined.list_directory(view, root, path)
    for path in ["host/x", "d/up/x"]:
        with pytest.raises(PathOutsideSandboxError):
            confined.make_directory(view, root, path)
        with pytest.raises(PathOutsideSandboxError):
            confined.delete(view, root, path)
        with pytest.raises(PathOutsideSandboxError):
            confined.exists(view, root, path)
        with pytest.raises(PathOutsideSandboxError):
            confined.file_info(view, root, path)
    with pytest.raises(PathOutsideSandboxError):
        confined.read_file(view, root, "../x")  # the user's own path, lexically
    assert canary.untouched()


def test_loops_and_too_many_links(view: confined.View) -> None:
    ws = view.host
    (ws / "a").symlink_to("b")
    (ws / "b").symlink_to("a")
    (ws / "self").symlink_to("self/x")
    for i in range(45):  # a chain longer than the kernel's 40
        (ws / f"c{i}").symlink_to(f"c{i + 1}")
    (ws / "c45").write_text("end")
    for path in ["a", "self", "a/x", "c0"]:
        with pytest.raises(InvalidArgumentError, match="too many levels"):
            confined.read_file(view, view.root, path)
    assert confined.read_file(view, view.root, "c10") == b"end"  # 35 links are fine


def test_a_final_link_is_left_alone_where_asked(view: confined.View, canary: Canary) -> None:
    ws = view.host
    (ws / "out").symlink_to(canary.root)
    (ws / "dangling").symlink_to("nowhere")
    info = confined.file_info(view, view.root, "out")
    assert info.is_symlink
    assert not info.is_directory  # leads out of the sandbox: no host lookup
    assert info.size == len(str(canary.root))
    assert confined.exists(view, view.root, "dangling")
    confined.delete(view, view.root, "out")
    assert not os.path.lexists(ws / "out")
    assert canary.untouched()
    # a dangling link inside is followed by writes: its target is made
    confined.write_file(view, view.root, "dangling", b"made", append=False)
    assert (ws / "nowhere").read_bytes() == b"made"


def test_a_symlink_is_described_as_itself_wherever_it_leads(view: confined.View, canary: Canary) -> None:
    ws = view.host
    (ws / "dir").mkdir()
    (ws / "file").write_text("x")
    links = {  # every kind of target: a link is described as itself, whatever it leads to
        "to-dir": "dir",
        "to-dir-absolute": sandbox_path(view, "dir"),
        "to-dir-through-link": "to-dir/.",
        "to-root": "..",  # above the workspace
        "to-self-dir": ".",
        "to-file": "file",
        "to-host-dir": str(canary.root),  # exists on the host: must not say so
        "to-host-file": str(canary.root / "secret"),
        "dangling": "missing",
        "loop": "loop",
    }
    for name, target in links.items():
        (ws / name).symlink_to(target)
    listed = {i.name: i for i in confined.list_directory(view, view.root, ".")}
    for name, target in links.items():
        info = confined.file_info(view, view.root, name)
        assert (info.is_symlink, info.is_directory, info.size) == (True, False, len(target)), name
        assert listed[name] == info, name


def test_errors_are_typed(view: confined.View) -> None:
    ws = view.host
    (ws / "file").write_text("x")
    (ws / "dir").mkdir()
    os.mkfifo(ws / "pipe")
    root = view.root
    with pytest.raises(FileNotFoundInSandboxError):
        confined.read_file(view, root, "missing")
    with pytest.raises(FileNotFoundInSandboxError):
        confined.read_file(view, root, "file/below")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        confined.read_file(view, root, "dir")
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        confined.write_file(view, root, "dir", b"", append=False)
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        confined.write_file(view, root, ".", b"", append=False)
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        confined.write_file(view, root, "pipe", b"x", append=False)  # no reader: refused, not waited on
    with pytest.raises(InvalidArgumentError, match=f"{root}/file/x \\(or a parent\\) exists"):
        confined.write_file(view, root, "file/x/y", b"", append=False)
    with pytest.raises(InvalidArgumentError, match=f"{root}/file \\(or a parent\\) exists"):
        confined.make_directory(view, root, "file")
    with pytest.raises(InvalidArgumentError, match="is not a directory"):
        confined.list_directory(view, root, "file")
    with pytest.raises(FileNotFoundInSandboxError):
        confined.list_directory(view, root, "file/x")
    with pytest.raises(FileNotFoundInSandboxError):
        confined.directory(view, root, "file")
    with pytest.raises(InvalidArgumentError, match="root directory"):
        confined.delete(view, root, "dir/..")
    assert not confined.exists(view, root, "file/x")
    assert (ws / "file").read_text() == "x"


def test_resolve_takes_what_does_not_exist_by_name(view: confined.View) -> None:
    ws = view.host
    (ws / "real").mkdir()
    (ws / "link").symlink_to("real")
    (ws / "file").write_text("x")
    root = view.root
    assert confined.resolve(view, root, "link/new/deeper") == (
        ws / "real" / "new" / "deeper",
        f"{root}/link/new/deeper",
    )
    assert confined.resolve(view, root, "file/x")[0] == ws / "file" / "x"
    assert confined.resolve(view, root, "link", follow_symlinks=False)[0] == ws / "link"
    assert confined.resolve(confined.View(ws / "missing", root), root, "a/b")[0] == ws / "missing" / "a" / "b"


def test_delete_removes_a_tree_without_following_its_links(view: confined.View, canary: Canary) -> None:
    ws = view.host
    (ws / "tree" / "a" / "b").mkdir(parents=True)
    (ws / "tree" / "a" / "b" / "f").write_text("x")
    (ws / "tree" / "out").symlink_to(canary.root)
    (ws / "tree" / "a" / "secret").symlink_to(canary.root / "secret")
    os.mkfifo(ws / "tree" / "pipe")
    os.chmod(ws / "tree" / "a" / "b", 0o500)
    confined.delete(view, view.root, "tree")
    assert not os.path.lexists(ws / "tree")
    assert canary.untouched()
    with pytest.raises(FileNotFoundInSandboxError):
        confined.delete(view, view.root, "tree")


# -- deterministic races: a swap exactly between two steps -----------------------------------------------


def _prepare_swap(view: confined.View, canary: Canary, relative: bool) -> tuple[Path, Path]:
    """`d` (the sandbox's directory, holding a secret and a victim) and `d_alt`, a symlink to the canary
    (by its host path, or by `..`s that climb out of the workspace)."""
    ws = view.host
    (ws / "d").mkdir()
    (ws / "d" / "secret").write_bytes(b"sandbox secret")
    (ws / "d" / "victim").write_text("sandbox victim")
    (ws / "d" / "only-on-host").mkdir()  # so that listing tells the two apart by content, not name
    (ws / "d" / "listed").mkdir()  # a by-name reopen after the swap would list the canary's
    (ws / "d" / "listed" / "sandbox-only").write_text("")
    target = os.path.relpath(canary.root, ws) if relative else str(canary.root)
    (ws / "d_alt").symlink_to(target)
    return ws / "d", ws / "d_alt"


OPERATIONS: dict[str, Callable[[confined.View], Any]] = {
    "write_file": lambda v: confined.write_file(v, v.root, "d/secret", b"uploaded", append=False),
    "write_file new": lambda v: confined.write_file(v, v.root, "d/new/deeper", b"uploaded", append=False),
    "read_file": lambda v: confined.read_file(v, v.root, "d/secret"),
    "list_directory": lambda v: confined.list_directory(v, v.root, "d/listed"),
    "file_info": lambda v: confined.file_info(v, v.root, "d/secret"),
    "exists": lambda v: confined.exists(v, v.root, "d/victim"),
    "delete": lambda v: confined.delete(v, v.root, "d/victim"),
    "delete tree": lambda v: confined.delete(v, v.root, "d/only-on-host"),
    "make_directory": lambda v: confined.make_directory(v, v.root, "d/made/deeper"),
    "directory": lambda v: confined.directory(v, v.root, "d/only-on-host"),
}


def _judge(name: str, result: Any) -> None:
    """A result must be the sandbox's own."""
    if name == "read_file":
        assert result == b"sandbox secret"
    elif name == "list_directory":
        assert "sandbox-only" in {i.name for i in result}
    elif name == "file_info":
        assert result.size == len(b"sandbox secret")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-link", "relative-link"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_swap_during_the_walk_never_reaches_the_host(
    operation: str, relative: bool, view: confined.View, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk has opened `d`; then `d` and the symlink swap places. Every later step must act on the
    directory the walk holds (the sandbox's own, now named d_alt), never on what the name leads to now."""
    d, d_alt = _prepare_swap(view, canary, relative)
    real_enter = confined._Walk._enter
    swaps = []

    def enter_then_swap(walk: confined._Walk, name: str, *args: Any, **kwargs: Any) -> None:
        real_enter(walk, name, *args, **kwargs)
        if name == "d" and not swaps:
            exchange(d, d_alt)
            swaps.append(name)

    monkeypatch.setattr(confined._Walk, "_enter", enter_then_swap)
    result = OPERATIONS[operation](view)
    assert swaps, "the hook never ran"
    _judge(operation, result)
    assert canary.untouched()
    assert d.is_symlink()  # the swap did happen: `d` names the host directory now


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_swap_before_the_walk_is_refused(operation: str, view: confined.View, canary: Canary) -> None:
    d, d_alt = _prepare_swap(view, canary, relative=False)
    exchange(d, d_alt)
    with pytest.raises(PathOutsideSandboxError):
        OPERATIONS[operation](view)
    assert canary.untouched()


@pytest.mark.parametrize("operation", ["read_file", "write_file", "file_info", "delete"])
def test_a_file_swapped_for_a_link_after_the_walk_is_not_followed_out(
    operation: str, view: confined.View, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last component turns into a symlink to a host file after the walk reached its directory: the
    final open (O_NOFOLLOW) notices and follows it our way, which refuses it; a final stat or unlink acts
    on the link itself."""
    _prepare_swap(view, canary, relative=False)
    real_enter = confined._Walk._enter

    def enter_then_swap(walk: confined._Walk, name: str, *args: Any, **kwargs: Any) -> None:
        real_enter(walk, name, *args, **kwargs)
        if name == "d":
            os.rename(view.host / "d" / "secret", view.host / "d" / "moved")
            os.symlink(canary.root / "secret", view.host / "d" / "secret")

    monkeypatch.setattr(confined._Walk, "_enter", enter_then_swap)
    call = {
        "read_file": lambda: confined.read_file(view, view.root, "d/secret"),
        "write_file": lambda: confined.write_file(view, view.root, "d/secret", b"pwned", append=True),
        "file_info": lambda: confined.file_info(view, view.root, "d/secret"),
        "delete": lambda: confined.delete(view, view.root, "d/secret"),
    }[operation]
    if operation in ("read_file", "write_file"):
        with pytest.raises(PathOutsideSandboxError):
            call()
    else:
        result = call()
        if operation == "file_info":
            assert result.is_symlink
            assert not result.is_directory
    assert canary.untouched()


def test_a_directory_swapped_during_a_removal_is_not_followed(
    view: confined.View, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _d_alt = _prepare_swap(view, canary, relative=False)
    (d / "only-on-host" / "inner").write_text("x")
    real_open = confined._open_doomed
    swaps = []

    def swap_then_open(parent: int, name: str, above: Any) -> Any:
        if name == "only-on-host" and not swaps:
            os.rename(d / "only-on-host", view.host / "moved-away")
            os.symlink(canary.root / "only-on-host", d / "only-on-host")
            swaps.append(name)
        return real_open(parent, name, above)

    monkeypatch.setattr(confined, "_open_doomed", swap_then_open)
    confined.delete(view, view.root, "d")
    assert swaps
    assert not os.path.lexists(d)
    assert canary.untouched()


def test_a_copy_never_follows_a_link_swapped_in(
    tmp_path: Path, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live tree: the directory `d` becomes a symlink to the canary after the copy listed its parent, and
    again after it stat'ed `d` itself; the copy holds the link as a link, never the host's files."""
    src = tmp_path / "src"
    for name in ("d", "e"):
        (src / name).mkdir(parents=True)
        (src / name / "sandbox-file").write_text("mine")
    real_directory = confined._Copier._directory
    real_entry = confined._Copier._entry

    def entry_swapping_first(copier: confined._Copier, frame: Any, name: str) -> Any:
        if name == "d" and not (src / "d").is_symlink():  # between the listing and the stat
            os.rename(src / "d", src / "d-moved")
            os.symlink(canary.root, src / "d")
        return real_entry(copier, frame, name)

    def directory_swapping_first(copier: confined._Copier, frame: Any, name: str) -> Any:
        if name == "e" and not (src / "e").is_symlink():  # between the stat and the open
            os.rename(src / "e", src / "e-moved")
            os.symlink(canary.root, src / "e")
        return real_directory(copier, frame, name)

    monkeypatch.setattr(confined._Copier, "_entry", entry_swapping_first)
    monkeypatch.setattr(confined._Copier, "_directory", directory_swapping_first)
    confined.copy_tree(src, tmp_path / "copy")
    copied = tmp_path / "copy"
    assert (copied / "d").is_symlink()
    assert (copied / "e").is_symlink()
    assert os.readlink(copied / "d") == os.readlink(copied / "e") == str(canary.root)
    names = {name for _, dirs, files in os.walk(copied) for name in dirs + files}
    assert names == {"d", "e"}  # nothing of the canary's
    assert confined.tree_size(src) == 2 * len("mine")  # d-moved/ and e-moved/; the links count nothing


# -- a real race -----------------------------------------------------------------------------------------

SWAPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
end = time.monotonic() + float(sys.argv[1])
print("swapping", flush=True)
while time.monotonic() < end:
    libc.renameat2(-100, b"d", -100, b"d_alt", 2)
"""

# isolated only: with isolation "none" file operations act on the host's files as commands do
# (convention:paths), so a link to a host path leads there for both
MODES = [] if namespaces_unavailable() else ["namespaces"]


@pytest.mark.parametrize("isolation", MODES)
def test_a_sandbox_swapping_a_directory_for_a_link_never_escapes(
    isolation: str, canary: Canary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command exchanges `d` with `d_alt -> <host canary>` in a tight loop while upload_file and
    download_file work on `d/...` for a few seconds: results are the sandbox's own files or typed errors,
    and the canary is never read or written."""
    config = SandboxConfig(provider_config={"isolation": isolation})
    with Sandbox("local", config) as sandbox:
        sandbox.upload_file("d/secret", b"sandbox secret")
        sandbox.upload_file(".swapper.py", SWAPPER)
        sandbox.execute(f"ln -s {shlex.quote(str(canary.root))} d_alt")
        handle = sandbox.start_process("exec python3 .swapper.py 30")
        try:
            deadline = time.monotonic() + 20
            while "swapping" not in handle.stdout and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "swapping" in handle.stdout, handle.stderr
            results: dict[str, int] = {"ok": 0, "typed": 0}
            escapes: list[str] = []
            for operation in ("upload", "download"):
                end = time.monotonic() + 2.5
                tries = 0
                while time.monotonic() < end:
                    tries += 1
                    try:
                        if operation == "upload":
                            sandbox.upload_file(f"d/up{tries}", b"uploaded")
                        else:
                            data = sandbox.download_file("d/secret")
                            if data != b"sandbox secret":
                                escapes.append(f"download returned {data[:20]!r}")
                        results["ok"] += 1
                    except GrainchainError:
                        results["typed"] += 1
                    if not canary.untouched():
                        escapes.append(f"{operation} changed the canary: {sorted(canary.state())}")
                        break
        finally:
            handle.kill()
    assert not escapes, escapes
    assert canary.untouched()
    assert results["ok"] > 0, results  # the race was run, not refused wholesale


# -- tree copies -----------------------------------------------------------------------------------------


def _entries(root: Path) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            found[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, content)
    return found


def test_a_copy_keeps_what_a_snapshot_must_keep(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir" / "ro").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(os.urandom(100_000))
    (src / "dir" / "ro" / "inside").write_text("x")
    os.chmod(src / "dir" / "ro", 0o500)
    (src / "exec").write_text("#!/bin/sh\n")
    os.chmod(src / "exec", 0o4755)
    (src / "link").symlink_to("dir/file")
    (src / "dangling").symlink_to("/nowhere/at/all")
    os.link(src / "dir" / "file", src / "hardlink")
    os.mkfifo(src / "pipe", 0o640)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(src / "server.sock"))
    with open(src / "sparse", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB of hole
        f.seek(1 << 20)
        f.write(b"data in the middle")
    os.setxattr(src / "dir" / "file", "user.note", b"kept")
    if os.geteuid() == 0:
        os.chown(src / "exec", 1234, 5678)
        os.chmod(src / "exec", 0o4755)  # chown dropped the setuid bit
        os.lchown(src / "link", 4321, 8765)
    os.utime(src / "dir", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    os.utime(src, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))

    size = confined.copy_tree(src, tmp_path / "copy")

    copy = tmp_path / "copy"
    expected = _entries(src)
    del expected["server.sock"]  # sockets hold nothing: left out unless asked for
    assert _entries(copy) == expected
    assert os.stat(copy).st_mtime_ns == os.stat(src).st_mtime_ns  # the root's times and mode too
    assert stat.S_IMODE(os.stat(copy).st_mode) == stat.S_IMODE(os.stat(src).st_mode)
    assert os.stat(copy / "hardlink").st_ino == os.stat(copy / "dir" / "file").st_ino
    assert os.getxattr(copy / "dir" / "file", "user.note") == b"kept"
    assert os.stat(copy / "sparse").st_blocks * 512 < 1 << 20  # the hole stayed a hole
    assert (
        size == sum(p.lstat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()) - 100_000
    )

    with_sockets = tmp_path / "with-sockets"
    confined.copy_tree(src, with_sockets, sockets=True)
    assert stat.S_ISSOCK(os.lstat(with_sockets / "server.sock").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")
def test_a_copy_of_an_overlay_upper_keeps_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "opaque").mkdir(parents=True)
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.link(upper / "deleted", upper / "deleted-too")  # overlayfs shares one whiteout inode
    os.mknod(upper / "device", stat.S_IFCHR | 0o600, os.makedev(1, 3))

    confined.copy_tree(upper, tmp_path / "layer", whiteouts=True)

    layer = tmp_path / "layer"
    assert os.getxattr(layer / "opaque", "trusted.overlay.opaque") == b"y"
    st = os.lstat(layer / "deleted")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == 0
    assert os.lstat(layer / "deleted-too").st_ino == st.st_ino
    assert not os.path.lexists(layer / "device")  # a real device node is never copied
    plain = tmp_path / "plain"
    confined.copy_tree(upper, plain)
    assert sorted(os.listdir(plain)) == ["opaque"]


def test_a_copy_into_an_existing_directory_takes_the_root_s_metadata(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("x")
    os.chmod(src, 0o751)
    os.utime(src, ns=(10**18, 10**18))
    confined.copy_tree(src, dst, into=True)
    assert (dst / "f").read_text() == "x"
    assert (stat.S_IMODE(dst.stat().st_mode), dst.stat().st_mtime_ns) == (0o751, 10**18)


def test_a_copy_of_many_files_is_as_fast_as_cp(tmp_path: Path) -> None:
    """Not a benchmark (the machine may be busy): a guard against a copy that got much slower than cp -a."""
    src = tmp_path / "src"
    for i in range(20):
        (src / f"d{i}").mkdir(parents=True)
        for j in range(25):
            (src / f"d{i}" / f"f{j}").write_bytes(os.urandom(2048))
    ours, theirs = [], []
    for round_ in range(3):
        start = time.perf_counter()
        confined.copy_tree(src, tmp_path / f"ours{round_}")
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(["cp", "-a", str(src), str(tmp_path / f"cp{round_}")], check=True)
        theirs.append(time.perf_counter() - start)
    assert min(ours) < 4 * min(theirs) + 0.05, (ours, theirs)


@pytest.fixture
def _no_leak() -> Iterator[None]:
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.usefixtures("_no_leak")
def test_no_descriptor_is_left_open(view: confined.View, canary: Canary) -> None:
    _prepare_swap(view, canary, relative=True)
    (view.host / "l").symlink_to("d")
    for call in OPERATIONS.values():
        with contextlib.suppress(GrainchainError):
            call(view)
    for path in ["d_alt/x", "missing/x", "d/secret/x"]:
        with pytest.raises(GrainchainError):
            confined.read_file(view, view.root, path)
    confined.list_directory(view, view.root, ".")
    confined.copy_tree(view.host, view.host.parent / "copy")
    confined.tree_size(view.host)
