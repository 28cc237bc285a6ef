"""Layered workspaces for fast local snapshots (flavour-free): overlayfs, as root.

    <state_dir>/local/layers/<layer_id>/            an immutable tree: a former upper layer, or a flattened copy
    <state_dir>/local/layers/base/                  the empty bottom layer of every new sandbox
    <state_dir>/local/sandboxes/<id>/workspace      overlay mount: lowerdir = the stack's layers, upperdir below
                                    /upper-<token>  the sandbox's writable layer (named in its meta.json)
                                    /work-<token>   overlayfs' scratch directory
    <state_dir>/local/snapshots/<id>/layers.json    the layers of a layered snapshot, top first

A snapshot of an idle sandbox (no process but the namespace holder) *freezes* it: the upper layer is renamed
into layers/ and the sandbox continues on a fresh, empty upper above it, so the cost is a remount, whatever
the workspace holds. A busy sandbox cannot be remounted under its running processes: its upper layer is
copied instead (only what changed since the last snapshot or restore). Restoring mounts the snapshot's
layers under a fresh upper. Layers are shared by snapshots and sandboxes and deleted once nothing refers to
them (`collect_garbage`); stacks deeper than MAX_DEPTH are flattened into one layer.

Crash safety (a client SIGKILLed at any point leaves the old state or the new): new layers are made under
`.staging-*` names and renamed; a freeze saves the sandbox's new stack with the move still owed (`pending`)
before it renames the upper layer, and connect() finishes it (Stack.recover), so the layer is named by the
meta (never collected) and the workspace never rolls back; upper dirs nobody names are dropped there too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainchain.errors import ProviderError
from grainchain.providers.local import _confined as confined

PROVIDER = "local"
BASE = "base"
MAX_DEPTH = 32  # overlayfs takes up to 500 lowers; deep stacks slow every lookup down
_MNT_DETACH = 2
_MS_RDONLY = 1
_libc = ctypes.CDLL(None, use_errno=True)
_probe_cache: dict[str, tuple[str | None, str]] = {}


def layers_dir(state_dir: Path) -> Path:
    return state_dir / "local" / "layers"


def _mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {fstype} on {target}: {os.strerror(code)} ({data})")


def unmount(target: Path) -> None:
    """Unmount; lazily (MNT_DETACH) when still busy, e.g. a killed process not yet gone."""
    if _libc.umount2(str(target).encode(), 0) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EINVAL:  # not a mount point (any more)
        return
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"umount {target}: {os.strerror(code)}")


def is_mounted(target: Path) -> bool:
    path = str(target)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _options(lowers: list[str], upper: str | None, work: str | None, extra: str) -> str:
    data = "lowerdir=" + ":".join(lowers)
    if upper is not None and work is not None:
        data += f",upperdir={upper},workdir={work}"
    return data + extra


def _mount_overlay(
    target: Path, lowers: list[Path], upper: Path | None, work: Path | None, extra: str, flags: int = 0
) -> None:
    """Mount an overlay. Every directory is passed as /proc/self/fd/N of an open one: the options of a
    mount must fit in a page (a stack of long state-dir paths would not), and they show in the sandbox's
    /proc/self/mountinfo, which must not reveal host paths."""
    dirs = [*lowers, *([] if upper is None or work is None else [upper, work])]
    fds = [os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for path in dirs]
    names = [f"/proc/self/fd/{fd}" for fd in fds]
    try:
        if upper is None or work is None:
            _mount("overlay", target, "overlay", flags, _options(names, None, None, extra))
        else:
            lower_names, upper_name, work_name = names[:-2], names[-2], names[-1]
            _mount("overlay", target, "overlay", flags, _options(lower_names, upper_name, work_name, extra))
    finally:
        for fd in fds:
            os.close(fd)


def overlay_unavailable(state_dir: Path) -> str | None:
    """Why layered snapshots cannot be used under this state dir (None when they can). Probed once per
    state dir by mounting a small overlay there."""
    return _probe(state_dir)[0]


def _extra_options(state_dir: Path) -> str:
    return _probe(state_dir)[1]


def _probe(state_dir: Path) -> tuple[str | None, str]:
    key = str(state_dir)
    if key in _probe_cache:
        return _probe_cache[key]
    result: tuple[str | None, str]
    if os.geteuid() != 0:
        result = ("overlayfs mounts need root", "")
    elif any(c in key for c in ",:\\"):
        result = (f"the state dir {key} holds a character overlayfs options cannot carry (, : \\)", "")
    else:
        result = ("overlayfs is not available", "")
        base = state_dir / "local"
        base.mkdir(parents=True, exist_ok=True)
        _reap_probes(base)
        probe = Path(tempfile.mkdtemp(prefix=f"{_PROBE}{os.getpid()}-", dir=base))
        try:
            for name in ("lower", "upper", "work", "merged"):
                (probe / name).mkdir()
            # redirect_dir: directories can be renamed across layers; volatile: no sync of the whole upper
            # filesystem at every unmount (a remount per snapshot would otherwise flush everything dirty;
            # workspaces were never fsynced, and a crash-marked work dir is dropped by mount_stack)
            for extra in (",redirect_dir=on,volatile", ",volatile", ",redirect_dir=on", ""):
                try:
                    _mount_overlay(
                        probe / "merged", [probe / "lower"], probe / "upper", probe / "work", extra
                    )
                except OSError as exc:
                    result = (f"overlayfs cannot be mounted here: {exc}", "")
                    continue
                unmount(probe / "merged")
                result = (None, extra)
                break
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    _probe_cache[key] = result
    return result


_PROBE = ".overlay-probe-"


def _reap_probes(base: Path) -> None:
    """Remove the probes of processes that died in the middle (a killed client leaves its probe mounted)."""
    for entry in base.glob(f"{_PROBE}*"):
        owner = entry.name.removeprefix(_PROBE).split("-", 1)[0]
        if owner.isdigit() and (int(owner) == os.getpid() or os.path.exists(f"/proc/{owner}")):
            continue  # a probe running now (or of a process that cannot be told apart: left alone)
        try:
            if not owner.isdigit() and entry.stat().st_mtime > time.time() - 3600:
                continue  # an older grainchain's probe without its pid: only once surely stale
        except OSError:
            continue  # removed meanwhile
        with contextlib.suppress(OSError):
            unmount(entry / "merged")
        shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One writer of layers and snapshot metadata at a time, across processes (garbage collection must not
    see a layer between its creation and the snapshot that names it)."""
    base = state_dir / "local"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".layers.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _new_layer_id() -> str:
    return f"layer-{uuid.uuid4().hex}"


def base_layer(state_dir: Path) -> Path:
    """The empty bottom layer; its mode (0700) is a new workspace's."""
    path = layers_dir(state_dir) / BASE
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    return path


@dataclass
class Stack:
    """A sandbox's layered workspace: lower layer ids (top first) and the names of its upper and work dirs."""

    lowers: list[str]
    upper: str = field(default_factory=lambda: f"upper-{uuid.uuid4().hex[:12]}")
    # (former upper dir, layer id): a freeze saved before its rename, which `adopt` finishes (or None)
    pending: tuple[str, str] | None = None

    @property
    def work(self) -> str:
        return "work-" + self.upper.removeprefix("upper-")

    def stored(self) -> dict[str, Any]:
        data: dict[str, Any] = {"lowers": list(self.lowers), "upper": self.upper}
        if self.pending is not None:
            data["pending"] = list(self.pending)
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Stack:
        pending = data.get("pending")
        moved = None if not pending else (str(pending[0]), str(pending[1]))
        return cls([str(x) for x in data["lowers"]], str(data["upper"]), moved)

    def recover(self, state_dir: Path, root: Path) -> Stack:
        """After a crash: finish a freeze that was saved but not done, drop upper and work dirs nobody
        names; returns the stack without its intent (call under `locked`, the workspace unmounted)."""
        if self.pending is not None:
            adopt(state_dir, root, *self.pending)
        stack = Stack(list(self.lowers), self.upper)
        drop_strays(root, stack)
        return stack


def _layer_paths(state_dir: Path, lowers: list[str]) -> list[Path]:
    return [layers_dir(state_dir) / lid for lid in lowers]


def mount_stack(state_dir: Path, root: Path, workspace: Path, stack: Stack) -> None:
    """Mount the stack on the workspace (creating its upper and work dirs when new)."""
    upper, work = root / stack.upper, root / stack.work
    if not upper.exists():
        upper.mkdir(mode=0o700)
        top = _layer_paths(state_dir, stack.lowers[:1])[0]
        shutil.copystat(top, upper)  # the workspace root keeps its mode and mtime across the remount
    workspace.mkdir(mode=0o700, exist_ok=True)
    if is_mounted(workspace):
        return
    _remove(work)  # scratch space; after a crash of a volatile mount it holds a marker that refuses mounting
    work.mkdir(mode=0o700)
    lowers = _layer_paths(state_dir, stack.lowers)
    missing = [str(p) for p in lowers if not p.is_dir()]
    if missing:
        raise ProviderError(f"layers of the workspace are missing: {', '.join(missing)}", provider=PROVIDER)
    _mount_overlay(workspace, lowers, upper, work, _extra_options(state_dir))


def drop_upper(root: Path, stack: Stack) -> None:
    for name in (stack.upper, stack.work):
        _remove(root / name)


def _remove(path: Path) -> None:
    # overlayfs' work dir holds a root-only `work/work` directory: plain rmtree as root handles it
    shutil.rmtree(path, ignore_errors=True)


def _copy_tree(src: Path, dst: Path, *, into: bool = False) -> None:
    """Copy a tree with everything overlayfs wrote into a layer (whiteouts are character devices 0/0,
    opaque directories and redirects are trusted.* xattrs), by descriptors (grainchain/providers/local/_confined.py): the
    source may be live (a busy sandbox's upper layer, its /tmp), its commands swapping entries for
    symlinks meanwhile, and no link may be followed. Sockets are kept too (as cp -a did; _seal drops them
    from layers); other device nodes are left out."""
    confined.copy_tree(src, dst, into=into, whiteouts=True, sockets=True)


def _link_tree(src: Path, dst: Path) -> None:
    """cp -al: hard links instead of copies, for an immutable source that grainchain owns."""
    args = ["cp", "-a", "-l", "--no-target-directory", str(src), str(dst)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProviderError(f"copying {src} failed: {done.stderr.strip()}", provider=PROVIDER)


def copy_into(src: Path, dst: Path) -> None:
    """Copy the tree `src` into the (empty) directory `dst`, its root's mode and times included."""
    _copy_tree(src, dst, into=True)


def copy_into_new(src: Path, dst: Path) -> None:
    """Copy the tree `src` to `dst`, which must not exist yet."""
    _copy_tree(src, dst)


def stack_size_of(path: Path) -> int:
    """Bytes of the files below `path` (by descriptors: it may be a live tree)."""
    return confined.tree_size(path)


def new_layer_id() -> str:
    return _new_layer_id()


def adopt(state_dir: Path, root: Path, upper: str, layer_id: str) -> None:
    """Freeze: move the (idle, unmounted) upper layer `root/upper` into layers/ as `layer_id`, unless it was
    moved already, then drop its work dir. The caller saves the stack naming `layer_id` with this move as
    its `pending` intent first, so a kill at any point is finished by calling it again (Stack.recover)."""
    source, target = root / upper, layers_dir(state_dir) / layer_id
    if source.is_dir() and not target.exists():
        _record(state_dir, layer_id, _seal(source))
        source.rename(target)
    _remove(root / ("work-" + upper.removeprefix("upper-")))


def drop_strays(root: Path, stack: Stack) -> None:
    """Remove upper and work dirs that the stack does not name (left by a restore or a close that a crash
    interrupted after it had saved the new stack)."""
    for prefix in ("upper-", "work-"):
        for entry in root.glob(f"{prefix}*"):
            if entry.name not in (stack.upper, stack.work):
                _remove(entry)


def copy_upper(state_dir: Path, root: Path, stack: Stack) -> str:
    """A new layer holding a copy of the (busy, mounted) upper layer: what changed since the last freeze."""
    layer_id = _new_layer_id()
    staging = layers_dir(state_dir) / f".staging-{layer_id}"
    try:
        _copy_tree(root / stack.upper, staging)
        _record(state_dir, layer_id, _seal(staging))
        staging.rename(layers_dir(state_dir) / layer_id)
    except BaseException:
        _remove(staging)
        raise
    return layer_id


def import_tree(state_dir: Path, tree: Path) -> str:
    """A layer made of a plain tree (a copy snapshot's), by hard links: both stay immutable."""
    layer_id = _new_layer_id()
    staging = layers_dir(state_dir) / f".staging-{layer_id}"
    try:
        _link_tree(tree, staging)
        _record(state_dir, layer_id, _seal(staging))
        staging.rename(layers_dir(state_dir) / layer_id)
    except BaseException:
        _remove(staging)
        raise
    return layer_id


@contextlib.contextmanager
def merged_view(state_dir: Path, lowers: list[str]) -> Iterator[Path]:
    """The layers' merged tree, mounted read-only in a temporary directory."""
    paths = _layer_paths(state_dir, lowers)
    if len(paths) == 1:  # overlayfs wants two lowers without an upper
        paths.append(base_layer(state_dir))
    target = Path(tempfile.mkdtemp(prefix=".merged-", dir=layers_dir(state_dir)))
    try:
        _mount_overlay(target, paths, None, None, _extra_options(state_dir), _MS_RDONLY)
        try:
            yield target
        finally:
            unmount(target)
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()


def flatten(state_dir: Path, lowers: list[str]) -> str:
    """One layer holding the merged tree of `lowers` (plain files: no whiteouts left)."""
    layer_id = _new_layer_id()
    staging = layers_dir(state_dir) / f".staging-{layer_id}"
    try:
        with merged_view(state_dir, lowers) as merged:
            _copy_tree(merged, staging)
        _record(state_dir, layer_id, _seal(staging))
        staging.rename(layers_dir(state_dir) / layer_id)
    except BaseException:
        _remove(staging)
        raise
    return layer_id


def write_snapshot_layers(snapshot_dir: Path, lowers: list[str]) -> None:
    (snapshot_dir / "layers.json").write_text(json.dumps(lowers))


def snapshot_layer_ids(snapshot_dir: Path) -> list[str] | None:
    """The layers of a layered snapshot, None for a copy snapshot (its tree/ is the whole workspace)."""
    try:
        data = json.loads((snapshot_dir / "layers.json").read_text())
    except FileNotFoundError:
        return None
    return [str(x) for x in data]


def collect_garbage(state_dir: Path) -> None:
    """Delete the layers no snapshot and no sandbox refers to (call under `locked`)."""
    base = layers_dir(state_dir)
    if not base.is_dir():
        return
    used = {BASE}
    snapshots = state_dir / "local" / "snapshots"
    if snapshots.is_dir():
        for entry in snapshots.iterdir():
            with contextlib.suppress(OSError, ValueError):
                used.update(snapshot_layer_ids(entry) or [])
    sandboxes = state_dir / "local" / "sandboxes"
    if sandboxes.is_dir():
        for entry in sandboxes.iterdir():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                runtime = json.loads((entry / "meta.json").read_text()).get("runtime", {})
                used.update(runtime["stack"]["lowers"])
    for entry in base.iterdir():
        if entry.name not in used and not entry.name.startswith((".merged-", ".sizes")):
            _remove(entry)
    sizes = base / ".sizes"
    if sizes.is_dir():
        for entry in sizes.iterdir():
            if entry.name not in used:
                entry.unlink(missing_ok=True)


def _seal(path: Path) -> int:
    """Prepare a new layer: drop what holds no data that could be captured (sockets, device nodes; a copy
    snapshot leaves them out too), keep overlayfs' whiteouts (character devices 0/0), and return the bytes
    of its files. A walk of names and stats only: no data is read."""
    total = 0
    pending = [str(path)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                elif (
                    stat.S_ISSOCK(st.st_mode)
                    or stat.S_ISBLK(st.st_mode)
                    or (stat.S_ISCHR(st.st_mode) and st.st_rdev != 0)
                ):
                    os.unlink(entry.path)
    return total


def _record(state_dir: Path, layer_id: str, size: int) -> None:
    sizes = layers_dir(state_dir) / ".sizes"
    sizes.mkdir(exist_ok=True)
    (sizes / layer_id).write_text(str(size))


def stack_size(state_dir: Path, lowers: list[str]) -> int:
    """Bytes of the files of all the layers (shared ones included: the snapshot needs them all)."""
    total = 0
    for layer_id in lowers:
        if layer_id == BASE:
            continue
        try:
            total += int((layers_dir(state_dir) / ".sizes" / layer_id).read_text())
        except (OSError, ValueError):
            size = _seal(layers_dir(state_dir) / layer_id)
            _record(state_dir, layer_id, size)
            total += size
    return total


def unchanged(root: Path, stack: Stack, state_dir: Path) -> bool:
    """Whether the upper layer holds nothing: no entry, and a root like its top layer's (a snapshot can
    then name the same layers instead of adding an empty one)."""
    upper = root / stack.upper
    with os.scandir(upper) as entries:
        if any(entries):
            return False
    mine, below = upper.stat(), (layers_dir(state_dir) / stack.lowers[0]).stat()
    return (mine.st_mode, mine.st_uid, mine.st_gid, mine.st_mtime_ns) == (
        below.st_mode,
        below.st_uid,
        below.st_gid,
        below.st_mtime_ns,
    )
