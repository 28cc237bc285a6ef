"""Blocking filesystem work of the local provider: its on-disk layout and snapshots (file operations,
confined to the workspace by descriptors: grainchain/providers/local/_confined.py).

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
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grainchain._ownership import Owner
from grainchain.errors import (
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import SandboxConfig, SandboxInfo, SandboxStatus, SnapshotInfo, SnapshotKind
from grainchain.providers.local import _confined as confined
from grainchain.providers.local import _disk as disk
from grainchain.providers.local import _layers as layers

PROVIDER = "local"
SANDBOX_ID = re.compile(r"local-[0-9a-f]{32}")  # always fullmatch(): no separators, no "\n"
_SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{32}")
# in meta.json's runtime while create() has not finished (a creator killed meanwhile: never found)
CREATING = "creating"
# Temporary siblings of a sandbox's workspace while a restore swaps it (see restore_snapshot).
_RESTORE_COPYING, _RESTORE_READY, _RESTORE_OUTGOING = ".restore-", ".ready-", ".old-"
# in a snapshot's `.staging-*` directory: the process writing it (grainchain/_ownership.py)
OWNER_FILE = ".owner"


def _write_json(path: Path, data: str) -> None:
    """Replace the file atomically: a temporary sibling, fsynced, renamed over it (a kill or a power loss
    leaves the old content or the new one)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def copy_tree(src: Path, dst: Path) -> int:
    """Copy a tree exactly: contents (cloned where the filesystem has reflinks), modes, owners (as root),
    mtimes, symlinks as symlinks (also dangling ones), named pipes; sockets and device nodes hold nothing
    that could be captured and are left out. By descriptors (grainchain/providers/local/_confined.py): the source may be a
    live workspace whose commands swap entries for symlinks meanwhile. Returns the bytes of its files."""
    return confined.copy_tree(src, dst)


class SandboxDir:
    """The directory of one local sandbox. What the sandbox can write (workspace, or the overlay's upper
    and work dirs, and /tmp) and its root directory live in `data`: the mount point of its size-limited
    disk (grainchain/providers/local/_disk.py) when it has one, else the sandbox's directory itself."""

    def __init__(self, state_dir: Path, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.state_dir = state_dir
        self.root = state_dir / "local" / "sandboxes" / sandbox_id
        self.meta = self.root / "meta.json"
        self.image = self.root / "disk.img"
        # what a snapshot of it records besides SnapshotInfo (namespace, expires_at): set by the adapter
        self.snapshot_fields: Callable[[], dict[str, Any]] = dict

    @property
    def data(self) -> Path:
        return self.root / "disk" if self.image.exists() else self.root

    @property
    def workspace(self) -> Path:
        return self.data / "workspace"

    @property
    def tmp(self) -> Path:
        return self.data / "tmp"

    @property
    def rootfs(self) -> Path:
        """The (empty, read-only) root directory of the sandbox's namespaces, as root."""
        return self.data / "rootfs"

    @classmethod
    def create(cls, state_dir: Path, config: SandboxConfig, disk_limit: int | None = None) -> SandboxDir:
        """A new sandbox directory; with `disk_limit` (bytes) on a disk of that size."""
        box = cls(state_dir.resolve(), f"local-{uuid.uuid4().hex}")
        box.root.mkdir(parents=True, mode=0o700)
        # who is making it, until meta.json says more: `grainchain cleanup` removes it if they die first
        (box.root / OWNER_FILE).write_text(json.dumps(Owner.current().stored()), encoding="utf-8")
        # Only the owner may enter: sandboxes, layers and snapshots hold what untrusted code wrote, e.g. a
        # setuid-root program that another user of the host must never reach.
        os.chmod(box.state_dir / "local", 0o700)
        try:
            if disk_limit is not None:
                disk.create(box.state_dir, box.image, box.root / "disk", disk_limit)
            box.workspace.mkdir(mode=0o700)
            box.tmp.mkdir(mode=0o700)
            # `creating` until the adapter saves what it made (its runtime): a creator killed before that
            # leaves a sandbox that open() does not find, never one that connects half-made
            box.save(SandboxStatus.running, config, created_at=datetime.now(UTC), runtime={CREATING: True})
            (box.root / OWNER_FILE).unlink()  # meta.json names the owner from now on
        except BaseException:
            box.remove()  # nothing half-made stays behind
            raise
        return box

    def mount_disk(self) -> None:
        """Mount the sandbox's disk if it has one and it is not mounted (after a reboot, or a close that
        kept the sandbox)."""
        if self.image.exists():
            disk.mount(self.image, self.root / "disk")

    def unmount_disk(self) -> None:
        if self.image.exists():
            disk.unmount(self.root / "disk")

    @classmethod
    def open(cls, state_dir: Path, sandbox_id: str) -> SandboxDir:
        box = cls(state_dir.resolve(), sandbox_id)
        if not SANDBOX_ID.fullmatch(sandbox_id) or not box.meta.is_file() or box.runtime().get(CREATING):
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
        *,
        owned: bool = True,
    ) -> None:
        """Write meta.json; `owner` is this process (`owned`), or None for a detached sandbox (never reaped)."""
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
            "owner": Owner.current().stored() if owned else None,
        }
        _write_json(self.meta, json.dumps(payload, indent=2))

    def remove(self) -> None:
        """Best effort: closing must not fail because a file could not be deleted. A layered workspace is
        unmounted first (deleting through the mount would only fill its upper layer with whiteouts)."""
        with contextlib.suppress(OSError):
            if layers.is_mounted(self.workspace):
                layers.unmount(self.workspace)
            if self.image.exists():
                disk.unmount(self.root / "disk")
            remove_tree(self.root)

    def recover(self) -> None:
        """Finish or undo a restore that a crash interrupted, then drop the restore's leftovers.

        A present workspace is authoritative. A missing one means the crash came between the two renames
        of restore_snapshot: the complete new copy (.ready-*) wins, else the old tree (.old-*) goes back.
        """
        if not os.path.lexists(self.workspace):
            ready = sorted(self.data.glob(f"{_RESTORE_READY}*"))
            outgoing = sorted(self.data.glob(f"{_RESTORE_OUTGOING}*"))
            if ready:
                ready[-1].rename(self.workspace)
            elif outgoing:
                outgoing[-1].rename(self.workspace)
            else:
                self.workspace.mkdir(mode=0o700)
        for prefix in (_RESTORE_COPYING, _RESTORE_READY, _RESTORE_OUTGOING):
            for leftover in self.data.glob(f"{prefix}*"):
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
    owner = staging / OWNER_FILE  # whose it is while staged: `grainchain cleanup` removes it once they die
    try:
        owner.write_text(json.dumps(Owner.current().stored()), encoding="utf-8")
        size = fill(staging)
        info = SnapshotInfo(
            snapshot_id=snapshot_id,
            provider=PROVIDER,
            kind=kind,
            created_at=datetime.now(UTC),
            source_sandbox_id=box.sandbox_id,
            size_bytes=size,
        )
        meta = {**info.model_dump(mode="json"), **box.snapshot_fields()}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        owner.unlink()
        staging.rename(final)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(staging)
        raise
    return info


def create_layered_snapshot(state_dir: Path, box: SandboxDir, lowers: list[str], size: int) -> SnapshotInfo:
    """A snapshot naming layers (see grainchain/providers/local/_layers.py); `size` is what its own new layer holds."""

    def fill(staging: Path) -> int:
        layers.write_snapshot_layers(staging, lowers)
        return size

    return publish_snapshot(state_dir, box, fill)


def _tree_size(root: Path) -> int:
    return confined.tree_size(root)


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
    copying = box.data / f"{_RESTORE_COPYING}{token}"
    ready = box.data / f"{_RESTORE_READY}{token}"
    outgoing = box.data / f"{_RESTORE_OUTGOING}{token}"
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


def snapshot_record(state_dir: Path, snapshot_id: str) -> tuple[SnapshotInfo, dict[str, Any]]:
    """A snapshot's SnapshotInfo and its meta.json as stored (`namespace`, `expires_at`: absent in
    snapshots made before them)."""
    data = json.loads((_snapshot_dir(state_dir, snapshot_id) / "meta.json").read_bytes())
    if not isinstance(data, dict):
        raise ValueError(f"malformed meta.json of {snapshot_id}")
    return SnapshotInfo.model_validate(data), data


def list_snapshot_records(
    state_dir: Path, namespace: Callable[[str | None], bool] | None = None
) -> list[tuple[SnapshotInfo, dict[str, Any]]]:
    """snapshot_record() of every snapshot whose recorded namespace `namespace` accepts, oldest first."""
    base = _snapshots(state_dir)
    if not base.is_dir():
        return []
    records = []
    for entry in base.iterdir():
        try:
            info, data = snapshot_record(state_dir, entry.name)
        except (SnapshotNotFoundError, OSError, ValueError):
            continue  # staging or deleting directory, or a foreign file
        if namespace is None or namespace(data.get("namespace")):
            records.append((info, data))
    return sorted(records, key=lambda r: r[0].created_at)


def list_snapshots(
    state_dir: Path, namespace: Callable[[str | None], bool] | None = None
) -> list[SnapshotInfo]:
    """The snapshots (of the namespaces `namespace` accepts), oldest first."""
    return [info for info, _ in list_snapshot_records(state_dir, namespace)]


def delete_snapshot(
    state_dir: Path, snapshot_id: str, namespace: Callable[[str | None], bool] | None = None
) -> None:
    """Rename the snapshot away first (one atomic step: it is gone for every reader), then delete the files;
    a crash half-way leaves an ignored `.deleting-*` directory, never a restorable half-deleted snapshot.
    A snapshot of a namespace `namespace` refuses is not found."""
    path = _snapshot_dir(state_dir, snapshot_id)
    if namespace is not None:
        try:
            recorded = snapshot_record(state_dir, snapshot_id)[1].get("namespace")
        except (OSError, ValueError):
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER) from None
        if not namespace(recorded):
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
    doomed = path.with_name(f".deleting-{snapshot_id}-{uuid.uuid4().hex}")
    try:
        path.rename(doomed)
    except FileNotFoundError:  # deleted by someone else meanwhile
        raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER) from None
    remove_tree(doomed)
