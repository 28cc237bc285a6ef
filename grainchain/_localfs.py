"""Blocking filesystem work of the local provider: its on-disk layout, file operations and snapshots.

    <state_dir>/local/sandboxes/<sandbox_id>/meta.json     SandboxInfo + the SandboxConfig it was made with
                                            /workspace/    what commands and file operations see
                                            /tmp/          TMPDIR of its commands
    <state_dir>/local/snapshots/<snapshot_id>/meta.json    SnapshotInfo
                                             /tree/        copy of the workspace

Writes that must not be seen half-done (new snapshot, restore) go to a temporary sibling and are renamed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

from grainchain.errors import (
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import FileInfo, SandboxConfig, SandboxInfo, SandboxStatus, SnapshotInfo, SnapshotKind

PROVIDER = "local"
_SANDBOX_ID = re.compile(r"^local-[0-9a-f]{32}$")
_SNAPSHOT_ID = re.compile(r"^snap-[0-9a-f]{32}$")


def _write_json(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(data, encoding="utf-8")
    tmp.replace(path)


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
        box.workspace.mkdir(mode=0o700)
        box.tmp.mkdir(mode=0o700)
        box.save(SandboxStatus.running, config, created_at=datetime.now(UTC))
        return box

    @classmethod
    def open(cls, state_dir: Path, sandbox_id: str) -> SandboxDir:
        box = cls(state_dir.resolve(), sandbox_id)
        if not _SANDBOX_ID.match(sandbox_id) or not box.meta.is_file():
            raise SandboxNotFoundError(f"no local sandbox with id {sandbox_id!r}", provider=PROVIDER)
        return box

    def info(self) -> SandboxInfo:
        return SandboxInfo.model_validate(json.loads(self.meta.read_text("utf-8"))["info"])

    def config(self) -> SandboxConfig:
        return SandboxConfig.model_validate(json.loads(self.meta.read_text("utf-8"))["config"])

    def save(self, status: SandboxStatus, config: SandboxConfig, created_at: datetime | None = None) -> None:
        info = SandboxInfo(
            sandbox_id=self.sandbox_id,
            provider=PROVIDER,
            status=status,
            created_at=created_at or self.info().created_at,
            metadata={"workspace": str(self.workspace), "owner_pid": str(os.getpid())},
        )
        payload = {"info": info.model_dump(mode="json"), "config": config.model_dump(mode="json")}
        _write_json(self.meta, json.dumps(payload, indent=2))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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


def file_info(path: Path) -> FileInfo:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise FileNotFoundInSandboxError(str(path), provider=PROVIDER) from None
    is_link = stat.S_ISLNK(st.st_mode)
    is_dir = stat.S_ISDIR(path.stat().st_mode if is_link and path.exists() else st.st_mode)
    return FileInfo(
        path=str(path),
        name=path.name,
        size=0 if is_dir else st.st_size,
        is_directory=is_dir,
        is_symlink=is_link,
        mode=stat.S_IMODE(st.st_mode),
        modified_time=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def list_directory(path: Path) -> list[FileInfo]:
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        raise FileNotFoundInSandboxError(str(path), provider=PROVIDER) from None
    except NotADirectoryError:
        raise InvalidArgumentError(f"{path} is not a directory", argument="path", provider=PROVIDER) from None
    infos = []
    for name in names:
        try:
            infos.append(file_info(path / name))
        except FileNotFoundInSandboxError:
            continue  # deleted while listing
    return infos


def write_file(path: Path, data: bytes, *, append: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "ab" if append else "wb") as f:
            f.write(data)
    except IsADirectoryError:
        raise InvalidArgumentError(f"{path} is a directory", argument="path", provider=PROVIDER) from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundInSandboxError(str(path), provider=PROVIDER) from None
    except IsADirectoryError:
        raise InvalidArgumentError(
            f"{path} is a directory; list_files() lists it", argument="path", provider=PROVIDER
        ) from None


def delete(path: Path, root: Path) -> None:
    if path == root:
        raise InvalidArgumentError(
            "cannot delete the sandbox's root directory", argument="path", provider=PROVIDER
        )
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
    else:
        raise FileNotFoundInSandboxError(str(path), provider=PROVIDER)


def make_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgumentError(
            f"{path} (or a parent) exists and is not a directory", argument="path", provider=PROVIDER
        ) from None


# -- snapshots ------------------------------------------------------------------------------------------


def _snapshots(state_dir: Path) -> Path:
    return state_dir / "local" / "snapshots"


def _snapshot_dir(state_dir: Path, snapshot_id: str) -> Path:
    path = _snapshots(state_dir) / snapshot_id
    if not _SNAPSHOT_ID.match(snapshot_id) or not (path / "meta.json").is_file():
        raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
    return path


def _tree_size(root: Path) -> int:
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(root) for f in files)


def create_snapshot(state_dir: Path, box: SandboxDir) -> SnapshotInfo:
    snapshot_id = f"snap-{uuid.uuid4().hex}"
    final = _snapshots(state_dir) / snapshot_id
    staging = final.with_name(f".staging-{snapshot_id}")
    staging.mkdir(parents=True, mode=0o700)
    try:
        shutil.copytree(box.workspace, staging / "tree", symlinks=True)
        info = SnapshotInfo(
            snapshot_id=snapshot_id,
            provider=PROVIDER,
            kind=SnapshotKind.filesystem,
            created_at=datetime.now(UTC),
            source_sandbox_id=box.sandbox_id,
            size_bytes=_tree_size(staging / "tree"),
        )
        (staging / "meta.json").write_text(info.model_dump_json(indent=2), encoding="utf-8")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def restore_snapshot(state_dir: Path, box: SandboxDir, snapshot_id: str) -> None:
    """Make the workspace exactly the snapshot's tree (same path, so commands keep finding it)."""
    source = _snapshot_dir(state_dir, snapshot_id) / "tree"
    incoming = box.root / f".restore-{uuid.uuid4().hex}"
    outgoing = box.root / f".old-{uuid.uuid4().hex}"
    try:
        shutil.copytree(source, incoming, symlinks=True)
        box.workspace.rename(outgoing)
        incoming.rename(box.workspace)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.rmtree(outgoing, ignore_errors=True)


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
            continue  # staging directory or foreign file
    return sorted(infos, key=lambda s: s.created_at)


def delete_snapshot(state_dir: Path, snapshot_id: str) -> None:
    shutil.rmtree(_snapshot_dir(state_dir, snapshot_id))
