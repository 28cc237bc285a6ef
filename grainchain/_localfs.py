"""Blocking filesystem work of the local provider: its on-disk layout, file operations and snapshots.

    <state_dir>/local/sandboxes/<sandbox_id>/meta.json     SandboxInfo + the SandboxConfig it was made with
                                            /workspace/    what commands and file operations see
                                            /tmp/          TMPDIR of its commands
    <state_dir>/local/snapshots/<snapshot_id>/meta.json    SnapshotInfo
                                             /tree/        copy of the workspace

Writes that must not be seen half-done (new snapshot, restore, snapshot deletion) go to a temporary sibling
and are renamed, so a crash at any point leaves either the old or the new state (plus leftovers that
`SandboxDir.recover` and the listings ignore or remove): never a half-copied workspace or snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import posixpath
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grainchain import _layers as layers
from grainchain.errors import (
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import FileInfo, SandboxConfig, SandboxInfo, SandboxStatus, SnapshotInfo, SnapshotKind

PROVIDER = "local"
_SANDBOX_ID = re.compile(r"local-[0-9a-f]{32}")  # always fullmatch(): no separators, no "\n"
_SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{32}")
# Temporary siblings of a sandbox's workspace while a restore swaps it (see restore_snapshot).
_RESTORE_COPYING, _RESTORE_READY, _RESTORE_OUTGOING = ".restore-", ".ready-", ".old-"


def _write_json(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(data, encoding="utf-8")
    tmp.replace(path)


def _add_owner_rwx(path: str) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)


def remove_tree(path: Path) -> None:
    """Delete a directory tree; a missing one is fine.

    Read-only directories inside (`chmod -w`, Go's module cache) would make a plain rmtree fail half-way for
    a non-root user, so on failure directories get u+rwx (never through a symlink) and it is tried again.
    """
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
    except OSError:
        if not os.path.lexists(path):
            return
        _add_owner_rwx(str(path))
        for dirpath, dirnames, _ in os.walk(path):  # top-down: a directory is fixed before it is entered
            for name in dirnames:
                child = os.path.join(dirpath, name)
                if not os.path.islink(child):
                    _add_owner_rwx(child)
        shutil.rmtree(path)


_FICLONE = 0x40049409  # ioctl: make dst share src's extents (btrfs, xfs with reflink, bcachefs ...)
_no_reflink: set[int] = set()  # devices where FICLONE failed once: plain copies there


def _reflink(src: str, dst: str, st: os.stat_result) -> bool:
    """Clone the file's data instead of copying it where the filesystem can (a copy snapshot or restore
    then costs metadata only); False where it cannot, and nothing was written."""
    if st.st_dev in _no_reflink:
        return False
    with open(src, "rb") as source, open(dst, "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        except OSError:
            _no_reflink.add(st.st_dev)
            cloned = False
        else:
            cloned = True
    if not cloned:
        os.unlink(dst)
        return False
    shutil.copystat(src, dst)
    return True


def _copy_entry(src: str, dst: str) -> str:
    """copytree's copy function: regular files with their metadata (cloned where the filesystem has
    reflinks, else copied), named pipes recreated; sockets and device nodes hold no data that could be
    captured and are left out (a plain copy would fail or hang)."""
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        if _reflink(src, dst, st):
            return dst
        return str(shutil.copy2(src, dst))
    if stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dst, stat.S_IMODE(st.st_mode))
        shutil.copystat(src, dst)
    return dst


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a tree exactly: contents, modes, mtimes, symlinks as symlinks (also dangling ones)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=_copy_entry)


class SandboxDir:
    """The directory of one local sandbox."""

    def __init__(self, state_dir: Path, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.root = state_dir / "local" / "sandboxes" / sandbox_id
        self.meta = self.root / "meta.json"
        self.workspace = self.root / "workspace"
        self.tmp = self.root / "tmp"

    @classmethod
    def create(cls, state_dir: Path, config: SandboxConfig) -> SandboxDir:
        box = cls(state_dir.resolve(), f"local-{uuid.uuid4().hex}")
        box.root.mkdir(parents=True, mode=0o700)
        try:
            box.workspace.mkdir(mode=0o700)
            box.tmp.mkdir(mode=0o700)
            box.save(SandboxStatus.running, config, created_at=datetime.now(UTC))
        except BaseException:
            box.remove()  # nothing half-made stays behind
            raise
        return box

    @classmethod
    def open(cls, state_dir: Path, sandbox_id: str) -> SandboxDir:
        box = cls(state_dir.resolve(), sandbox_id)
        if not _SANDBOX_ID.fullmatch(sandbox_id) or not box.meta.is_file():
            raise SandboxNotFoundError(f"no local sandbox with id {sandbox_id!r}", provider=PROVIDER)
        return box

    def info(self) -> SandboxInfo:
        return SandboxInfo.model_validate(json.loads(self.meta.read_text("utf-8"))["info"])

    def config(self) -> SandboxConfig:
        return SandboxConfig.model_validate(json.loads(self.meta.read_text("utf-8"))["config"])

    def runtime(self) -> dict[str, Any]:
        """What the owner needs to drive the sandbox again (isolation, holder, cgroup), as save() stored it."""
        data: dict[str, Any] = json.loads(self.meta.read_text("utf-8")).get("runtime", {})
        return data

    def save(
        self,
        status: SandboxStatus,
        config: SandboxConfig,
        created_at: datetime | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        if runtime is None and self.meta.exists():
            runtime = self.runtime()
        info = SandboxInfo(
            sandbox_id=self.sandbox_id,
            provider=PROVIDER,
            status=status,
            created_at=created_at or self.info().created_at,
            metadata={"workspace": str(self.workspace), "owner_pid": str(os.getpid())},
        )
        payload = {
            "info": info.model_dump(mode="json"),
            "config": config.model_dump(mode="json"),
            "runtime": runtime or {},
        }
        _write_json(self.meta, json.dumps(payload, indent=2))

    def remove(self) -> None:
        """Best effort: closing must not fail because a file could not be deleted. A layered workspace is
        unmounted first (deleting through the mount would only fill its upper layer with whiteouts)."""
        with contextlib.suppress(OSError):
            if layers.is_mounted(self.workspace):
                layers.unmount(self.workspace)
            remove_tree(self.root)

    def recover(self) -> None:
        """Finish or undo a restore that a crash interrupted, then drop the restore's leftovers.

        A present workspace is authoritative. A missing one means the crash came between the two renames
        of restore_snapshot: the complete new copy (.ready-*) wins, else the old tree (.old-*) goes back.
        """
        if not os.path.lexists(self.workspace):
            ready = sorted(self.root.glob(f"{_RESTORE_READY}*"))
            outgoing = sorted(self.root.glob(f"{_RESTORE_OUTGOING}*"))
            if ready:
                ready[-1].rename(self.workspace)
            elif outgoing:
                outgoing[-1].rename(self.workspace)
            else:
                self.workspace.mkdir(mode=0o700)
        for prefix in (_RESTORE_COPYING, _RESTORE_READY, _RESTORE_OUTGOING):
            for leftover in self.root.glob(f"{prefix}*"):
                remove_tree(leftover)
        self.tmp.mkdir(mode=0o700, exist_ok=True)


def list_sandboxes(state_dir: Path) -> list[SandboxInfo]:
    base = state_dir / "local" / "sandboxes"
    if not base.is_dir():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        try:
            found.append(SandboxDir.open(state_dir, entry.name).info())
        except (SandboxNotFoundError, OSError, ValueError):
            continue  # half-created or foreign directory
    return found


# -- files ----------------------------------------------------------------------------------------------

_MAX_LINKS = 40  # as the kernel's limit on symlinks followed in one lookup


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_in_view(
    host_root: Path, view_root: str, view_cwd: str, path: str, *, follow_symlinks: bool = True
) -> tuple[Path, str]:
    """Map a path as the sandbox's commands see it to the host file it names: (host path, shown path).

    `view_root` is the workspace as commands see it (/workspace when isolated, else the host path itself);
    a relative `path` starts at `view_cwd`. `..` is resolved by name first (`link/..` is the directory
    holding `link`); symlinks are then followed the way the sandbox's kernel view would follow them, so an
    absolute link target means a path inside the sandbox, not on the host. The host path returned has every
    link resolved (the host must not follow a link with its own view); the shown path is the normalised
    one, for FileInfo.path and messages. Raises PathOutsideSandboxError when the path, or a link on the
    way, leads out of the workspace. With follow_symlinks=False a link as the last component is not followed.
    """
    shown = posixpath.normpath(posixpath.join(view_cwd, path))
    if shown.startswith("//"):
        shown = shown[1:]
    if not _within(shown, view_root):
        raise PathOutsideSandboxError(
            path, f"it resolves to {shown}, outside the sandbox's workspace {view_root}"
        )
    pending = [c for c in shown[len(view_root) :].split("/") if c]
    resolved: list[str] = []  # components below view_root, every one a real directory or the last name
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            if not resolved:
                raise PathOutsideSandboxError(
                    path, f"a symlink on the way leads above the workspace {view_root}"
                )
            resolved.pop()
            continue
        host = host_root.joinpath(*resolved, name)
        if (pending or follow_symlinks) and os.path.islink(host):
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgumentError(f"too many levels of symbolic links in {path!r}", argument="path")
            target = os.readlink(host)
            if target.startswith("/"):
                target = posixpath.normpath(target)
                if not _within(target, view_root):
                    raise PathOutsideSandboxError(
                        path,
                        f"a symlink on the way leads to {target}, outside the sandbox's workspace {view_root}",
                    )
                resolved = []
                target = target[len(view_root) :]
            pending = [c for c in target.split("/") if c] + pending
            continue
        resolved.append(name)
    return host_root.joinpath(*resolved), shown


def file_info(path: Path, shown: str | None = None) -> FileInfo:
    shown = str(path) if shown is None else shown
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundInSandboxError(shown, provider=PROVIDER) from None
    is_link = stat.S_ISLNK(st.st_mode)
    is_dir = stat.S_ISDIR(path.stat().st_mode if is_link and path.exists() else st.st_mode)
    return FileInfo(
        path=shown,
        name=posixpath.basename(shown),
        size=0 if is_dir else st.st_size,
        is_directory=is_dir,
        is_symlink=is_link,
        mode=stat.S_IMODE(st.st_mode),
        modified_time=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def list_directory(path: Path, shown: str | None = None) -> list[FileInfo]:
    shown = str(path) if shown is None else shown
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise FileNotFoundInSandboxError(shown, provider=PROVIDER) from None
    except NotADirectoryError:
        if not os.path.lexists(path):  # a file on the way: "file.txt/x"
            raise FileNotFoundInSandboxError(shown, provider=PROVIDER) from None
        raise InvalidArgumentError(
            f"{shown} is not a directory", argument="path", provider=PROVIDER
        ) from None
    infos = []
    for name in names:
        try:
            infos.append(file_info(path / name, posixpath.join(shown, name)))
        except FileNotFoundInSandboxError:
            continue  # deleted while listing
    return infos


def _not_regular(shown: str, st: os.stat_result, operation: str) -> InvalidArgumentError:
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    hint = (
        "; list_files() lists it" if stat.S_ISDIR(st.st_mode) else f" (only regular files can be {operation})"
    )
    return InvalidArgumentError(f"{shown} is {what}{hint}", argument="path", provider=PROVIDER)


def write_file(path: Path, data: bytes, *, append: bool, shown: str | None = None) -> None:
    shown = str(path) if shown is None else shown
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgumentError(
            f"{posixpath.dirname(shown)} (or a parent) exists and is not a directory",
            argument="path",
            provider=PROVIDER,
        ) from None
    # O_NONBLOCK: opening a named pipe nobody reads must fail, not hang; no O_TRUNC before the type check.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except IsADirectoryError:
        raise InvalidArgumentError(f"{shown} is a directory", argument="path", provider=PROVIDER) from None
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: a named pipe without a reader
            raise
        raise InvalidArgumentError(
            f"{shown} is not a regular file (only regular files can be written)",
            argument="path",
            provider=PROVIDER,
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown, st, "written")
        if not append:
            os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_file(path: Path, shown: str | None = None) -> bytes:
    shown = str(path) if shown is None else shown
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a named pipe must not hang us
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundInSandboxError(shown, provider=PROVIDER) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(shown, st, "read")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def delete(path: Path, root: Path, shown: str | None = None) -> None:
    if path == root:
        raise InvalidArgumentError(
            "cannot delete the sandbox's root directory", argument="path", provider=PROVIDER
        )
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    else:
        raise FileNotFoundInSandboxError(str(path) if shown is None else shown, provider=PROVIDER)


def make_directory(path: Path, shown: str | None = None) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        shown = str(path) if shown is None else shown
        raise InvalidArgumentError(
            f"{shown} (or a parent) exists and is not a directory", argument="path", provider=PROVIDER
        ) from None


# -- snapshots ------------------------------------------------------------------------------------------


def _snapshots(state_dir: Path) -> Path:
    return state_dir / "local" / "snapshots"


def _snapshot_dir(state_dir: Path, snapshot_id: str) -> Path:
    path = _snapshots(state_dir) / snapshot_id
    if not _SNAPSHOT_ID.fullmatch(snapshot_id) or not (path / "meta.json").is_file():
        raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
    return path


def snapshot_tree(state_dir: Path, snapshot_id: str) -> Path:
    """The captured tree of a copy snapshot (a layered one has layers.json instead, see snapshot_layers);
    SnapshotNotFoundError for an unknown or malformed id."""
    return _snapshot_dir(state_dir, snapshot_id) / "tree"


def snapshot_info(state_dir: Path, snapshot_id: str) -> SnapshotInfo:
    path = _snapshot_dir(state_dir, snapshot_id)
    return SnapshotInfo.model_validate_json((path / "meta.json").read_bytes())


def snapshot_path(state_dir: Path, snapshot_id: str) -> Path:
    """The directory of a snapshot; SnapshotNotFoundError for an unknown or malformed id."""
    return _snapshot_dir(state_dir, snapshot_id)


def snapshot_layers(state_dir: Path, snapshot_id: str) -> list[str] | None:
    """The layer ids (top first) of a layered snapshot, None for a copy snapshot; SnapshotNotFoundError
    for an unknown or malformed id."""
    return layers.snapshot_layer_ids(_snapshot_dir(state_dir, snapshot_id))


def publish_snapshot(
    state_dir: Path,
    box: SandboxDir,
    fill: Callable[[Path], int],
    kind: SnapshotKind = SnapshotKind.filesystem,
) -> SnapshotInfo:
    """Write a snapshot into `.staging-<id>` (fill() writes its content and returns its size) and rename it
    to `<id>` once complete, meta.json included, so an id is never visible before all of it is on disk."""
    snapshot_id = f"snap-{uuid.uuid4().hex}"
    final = _snapshots(state_dir) / snapshot_id
    staging = final.with_name(f".staging-{snapshot_id}")
    staging.mkdir(parents=True, mode=0o700)
    try:
        size = fill(staging)
        info = SnapshotInfo(
            snapshot_id=snapshot_id,
            provider=PROVIDER,
            kind=kind,
            created_at=datetime.now(UTC),
            source_sandbox_id=box.sandbox_id,
            size_bytes=size,
        )
        (staging / "meta.json").write_text(info.model_dump_json(indent=2), encoding="utf-8")
        staging.rename(final)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(staging)
        raise
    return info


def create_layered_snapshot(state_dir: Path, box: SandboxDir, lowers: list[str], size: int) -> SnapshotInfo:
    """A snapshot naming layers (see grainchain/_layers.py); `size` is what its own new layer holds."""

    def fill(staging: Path) -> int:
        layers.write_snapshot_layers(staging, lowers)
        return size

    return publish_snapshot(state_dir, box, fill)


def _tree_size(root: Path) -> int:
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(root) for f in files)


def create_snapshot(state_dir: Path, box: SandboxDir) -> SnapshotInfo:
    """A copy snapshot: the whole workspace copied into the snapshot's tree/."""

    def fill(staging: Path) -> int:
        copy_tree(box.workspace, staging / "tree")
        return _tree_size(staging / "tree")

    return publish_snapshot(state_dir, box, fill)


def restore_snapshot(state_dir: Path, box: SandboxDir, snapshot_id: str) -> None:
    """Make the (plain, unmounted) workspace exactly the snapshot's tree; a layered snapshot's tree is
    read from its layers' merged view (mounting it needs root)."""
    lowers = snapshot_layers(state_dir, snapshot_id)
    if lowers is None:
        restore_tree(box, snapshot_tree(state_dir, snapshot_id))
        return
    with layers.merged_view(state_dir, lowers) as merged:
        restore_tree(box, merged)


def restore_tree(box: SandboxDir, source: Path) -> None:
    """Make the workspace exactly a copy of `source` (same path, so commands keep finding it).

    The copy is made beside the workspace (.restore-*), renamed .ready-* once complete, then swapped in by
    two renames (workspace -> .old-*, .ready-* -> workspace). An error rolls back; a crash is finished or
    undone by SandboxDir.recover(). The old tree is deleted only after the new one is in place.
    """
    box.recover()
    token = uuid.uuid4().hex
    copying = box.root / f"{_RESTORE_COPYING}{token}"
    ready = box.root / f"{_RESTORE_READY}{token}"
    outgoing = box.root / f"{_RESTORE_OUTGOING}{token}"
    try:
        copy_tree(source, copying)
        copying.rename(ready)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(copying)
        raise
    box.workspace.rename(outgoing)
    try:
        ready.rename(box.workspace)
    except BaseException:
        outgoing.rename(box.workspace)
        with contextlib.suppress(OSError):
            remove_tree(ready)
        raise
    with contextlib.suppress(OSError):  # the restore is done; a leftover is dropped by the next recover()
        remove_tree(outgoing)


def list_snapshots(state_dir: Path) -> list[SnapshotInfo]:
    base = _snapshots(state_dir)
    if not base.is_dir():
        return []
    infos = []
    for entry in base.iterdir():
        try:
            infos.append(
                SnapshotInfo.model_validate_json(
                    (_snapshot_dir(state_dir, entry.name) / "meta.json").read_bytes()
                )
            )
        except (SnapshotNotFoundError, OSError, ValueError):
            continue  # staging or deleting directory, or a foreign file
    return sorted(infos, key=lambda s: s.created_at)


def delete_snapshot(state_dir: Path, snapshot_id: str) -> None:
    """Rename the snapshot away first (one atomic step: it is gone for every reader), then delete the files;
    a crash half-way leaves an ignored `.deleting-*` directory, never a restorable half-deleted snapshot."""
    path = _snapshot_dir(state_dir, snapshot_id)
    doomed = path.with_name(f".deleting-{snapshot_id}-{uuid.uuid4().hex}")
    try:
        path.rename(doomed)
    except FileNotFoundError:  # deleted by someone else meanwhile
        raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER) from None
    remove_tree(doomed)
