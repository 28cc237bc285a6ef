"""What `grainchain sandboxes / snapshots / cleanup` do for the local provider (blocking).

Only what is provably grainchain's and provably abandoned, under this state dir, is touched:

* a sandbox directory (`local/sandboxes/local-<hex>` with meta.json) whose recorded owner
  (grainchain/_ownership.py) is dead, which was not detached and not made to outlive its client
  (keep_alive, auto_cleanup=False). It is closed the way its owner would have (connect, then close with
  auto_cleanup: processes, mounts, cgroup, directory, layers only it used); if that fails, by hand: its
  cgroup's processes and those carrying its sandbox marker killed, every mount below its directory
  unmounted, its cgroup and directory removed.
* a snapshot's `.staging-*` directory whose writer (its `.owner` file) is dead, or, without an owner file
  (made before they were), older than STALE_UNOWNED; `.deleting-*` directories older than STALE_PROBE;
  `.overlay-probe-*` / `.disk-probe-*` directories older than STALE_PROBE (a probe lasts milliseconds),
  `disk-templates/.staging-*` and `layers/.merged-*` older than STALE_UNOWNED; every mount below them is
  unmounted first. Layers nothing names (and their `.staging-*`) go by the provider's garbage collection,
  under its lock.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from grainchain import _ownership as ownership
from grainchain._commands import SANDBOX_MARKER
from grainchain.errors import SandboxNotFoundError
from grainchain.models import SandboxConfig, SandboxInfo
from grainchain.providers.local import _cgroups as cg
from grainchain.providers.local import _layers as layers
from grainchain.providers.local import _localfs as fs
from grainchain.providers.local._hostproc import kill_marked
from grainchain.settings import Settings

PROVIDER = "local"
STALE_PROBE = 600.0  # seconds: an unowned probe or deletion this old is abandoned
STALE_UNOWNED = 3600.0  # seconds: an unowned staging copy this old is abandoned


def _local(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "local"


def sandbox_records(settings: Settings) -> list[ownership.SandboxRecord]:
    state = settings.state_dir.resolve()
    base = state / "local" / "sandboxes"
    if not base.is_dir():
        return []
    records = []
    for entry in sorted(base.iterdir()):
        try:
            box = fs.SandboxDir.open(state, entry.name)
            data = json.loads(box.meta.read_text("utf-8"))
            info = SandboxInfo.model_validate(data["info"])
            config = SandboxConfig.model_validate(data["config"])
        except (OSError, ValueError, KeyError, TypeError, SandboxNotFoundError):
            continue  # half-created or foreign directory
        detached = "owner" in data and data["owner"] is None
        owner = ownership.Owner.from_stored(data.get("owner"))
        if owner is None and not detached and (pid := info.metadata.get("owner_pid", "")).isdigit():
            owner = ownership.Owner(int(pid))  # recorded before owners were: the pid only
        records.append(
            ownership.SandboxRecord(
                provider=PROVIDER,
                sandbox_id=info.sandbox_id,
                status=info.status.value,
                created_at=info.created_at,
                owner=owner,
                detached=detached,
                kept=config.keep_alive or not config.auto_cleanup,
                detail=str(box.root),
            )
        )
    return records


def close_sandbox(settings: Settings, sandbox_id: str) -> None:
    """Close a sandbox as its owner would with auto_cleanup (SandboxNotFoundError for an unknown id); what
    that leaves (it could not connect, a damaged directory) is removed by hand."""
    from grainchain.sync import Sandbox

    box = fs.SandboxDir.open(settings.state_dir, sandbox_id)  # SandboxNotFoundError
    with contextlib.suppress(Exception):  # a broken sandbox is removed by hand
        Sandbox.connect(
            sandbox_id, PROVIDER, SandboxConfig(auto_cleanup=True, keep_alive=False), settings=settings
        ).close()
    if box.root.exists() or mounts_below(box.root):  # (files deleted from under its mounts, say)
        _remove_by_hand(settings, sandbox_id)


def _remove_by_hand(settings: Settings, sandbox_id: str) -> None:
    state = settings.state_dir.resolve()
    box = fs.SandboxDir(state, sandbox_id)
    runtime: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        runtime = box.runtime()
    group = None
    with contextlib.suppress(Exception):
        if runtime.get("cgroup"):
            group = cg.SandboxCgroup.from_stored(runtime["cgroup"])
        else:  # a creator killed before it recorded its cgroup
            group = cg.SandboxCgroup.named(sandbox_id)
    if group is not None and group.exists():
        group.kill_all()
    kill_marked(f"{SANDBOX_MARKER}={sandbox_id}")
    unmount_below(box.root)
    if group is not None:
        with contextlib.suppress(OSError):
            group.remove()
    fs.remove_tree(box.root)
    with layers.locked(state):
        layers.collect_garbage(state)


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_below(path: Path) -> None:
    for point in mounts_below(path):
        with contextlib.suppress(OSError):
            layers.unmount(point)


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove_dir(path: Path) -> None:
    unmount_below(path)
    fs.remove_tree(path)


def _recorded_owner(path: Path) -> ownership.Owner | None:
    with contextlib.suppress(OSError, ValueError):
        return ownership.Owner.from_stored(json.loads((path / fs.OWNER_FILE).read_text("utf-8")))
    return None


def _half_made(settings: Settings) -> list[tuple[Path, str]]:
    """Sandbox directories whose creator died before the sandbox was made (`creating` in meta.json, or no
    meta.json yet): connect() does not find them, nothing else would remove their mounts and cgroup."""
    base = _local(settings) / "sandboxes"
    found = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        if not fs.SANDBOX_ID.fullmatch(entry.name):
            continue
        try:
            data = json.loads((entry / "meta.json").read_text("utf-8"))
        except FileNotFoundError:  # killed before it was written: the .owner file says whose it was
            owner = _recorded_owner(entry)
            if owner is not None and owner.state() == "dead":
                found.append((entry, f"half-made: its creator (pid {owner.pid}) died before meta.json"))
            elif owner is None and _age(entry) > STALE_PROBE:
                found.append((entry, f"half-made ({_age(entry) / 60:.0f} min old, no meta.json)"))
            continue
        except (OSError, ValueError):
            continue
        if not (data.get("runtime") or {}).get(fs.CREATING):
            continue
        owner = ownership.Owner.from_stored(data.get("owner"))
        if owner is not None and owner.state() == "dead":
            found.append((entry, f"half-made: its creator (pid {owner.pid}) died while creating it"))
    return found


def leftovers(settings: Settings) -> list[ownership.Leftover]:
    """Everything `grainchain cleanup` would remove under this state dir."""
    found: list[ownership.Leftover] = []
    for record in sandbox_records(settings):
        if record.reapable:
            assert record.owner is not None
            found.append(
                ownership.Leftover(
                    PROVIDER,
                    "sandbox",
                    record.sandbox_id,
                    f"owner pid {record.owner.pid} is gone ({record.status})",
                    lambda sid=record.sandbox_id: close_sandbox(settings, sid),  # type: ignore[misc]
                )
            )
    for path, why in _half_made(settings):
        found.append(
            ownership.Leftover(
                PROVIDER,
                "sandbox",
                path.name,
                why,
                lambda sid=path.name: _remove_by_hand(settings, sid),  # type: ignore[misc]
            )
        )
    local = _local(settings)

    def stale(path: Path, kind: str, why: str) -> None:
        found.append(ownership.Leftover(PROVIDER, kind, str(path), why, lambda: _remove_dir(path)))

    snapshots = local / "snapshots"
    for path in sorted(snapshots.glob(".staging-*")) if snapshots.is_dir() else []:
        owner = _recorded_owner(path)
        if owner is not None and owner.state() == "dead":
            stale(path, "staging", f"its writer (pid {owner.pid}) is gone")
        elif owner is None and not (path / fs.OWNER_FILE).exists() and _age(path) > STALE_UNOWNED:
            stale(path, "staging", f"no writer recorded, {_age(path) / 3600:.1f} h old")
    for path in sorted(snapshots.glob(".deleting-*")) if snapshots.is_dir() else []:
        if _age(path) > STALE_PROBE:
            stale(path, "staging", "a deletion that did not finish")
    for pattern in (".overlay-probe-*", ".disk-probe-*"):
        for path in sorted(local.glob(pattern)) if local.is_dir() else []:
            if _age(path) > STALE_PROBE:
                stale(path, "probe", f"a probe left behind, {_age(path) / 60:.0f} min old")
    for pattern in ("disk-templates/.staging-*", "layers/.merged-*"):
        for path in sorted(local.glob(pattern)) if local.is_dir() else []:
            if _age(path) > STALE_UNOWNED:
                stale(path, "staging", f"left behind, {_age(path) / 3600:.1f} h old")
    return found


def collect_layers(settings: Settings) -> None:
    """Layers no snapshot or sandbox names, and layer copies nobody finished (under the provider's lock)."""
    state = settings.state_dir.resolve()
    if (state / "local" / "layers").is_dir():
        with layers.locked(state):
            layers.collect_garbage(state)


# -- snapshots ------------------------------------------------------------------------------------------


def snapshot_records(settings: Settings) -> list[ownership.SnapshotRecord]:
    state = settings.state_dir.resolve()
    return [
        ownership.SnapshotRecord(
            provider=PROVIDER,
            snapshot_id=info.snapshot_id,
            kind=info.kind.value,
            created_at=info.created_at,
            expires_at=ownership.parse_time(data.get("expires_at")),
            size_bytes=info.size_bytes,
            source_sandbox_id=info.source_sandbox_id,
        )
        for info, data in fs.list_snapshot_records(state, lambda ns: ownership.belongs(ns, settings))
    ]


def delete_snapshot(settings: Settings, snapshot_id: str) -> None:
    """SnapshotNotFoundError for an unknown id or another namespace's."""
    state = settings.state_dir.resolve()
    fs.delete_snapshot(state, snapshot_id, lambda ns: ownership.belongs(ns, settings))
    collect_layers(settings)


def expired_snapshots(settings: Settings, now: datetime | None = None) -> list[ownership.SnapshotRecord]:
    return [r for r in snapshot_records(settings) if ownership.expired(r.expires_at, now)]
