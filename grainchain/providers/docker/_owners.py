"""Ownership of docker sandboxes and snapshots (grainchain/_ownership.py): labels and the owner records.

* Containers and the named volumes made for them carry `grainchain.namespace` and `grainchain.owner.*`
  (the client that created the container: pid, start time, boot id, machine id). Labels cannot change, so
  a client that connects to the sandbox later, or detaches from it, says so in
  `<state_dir>/docker/owners/<sandbox_id>.json` ({"owner": {...}} or {"owner": null} for detached), which
  then takes precedence over the labels.
* Snapshot images carry `grainchain.namespace` and `grainchain.snapshot.expires` (ISO time, "" for never):
  written on every commit (a commit inherits the container's and its image's labels).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from grainchain import _ownership as ownership

LABEL_NAMESPACE = "grainchain.namespace"
LABEL_OWNER = "grainchain.owner"  # prefix: grainchain.owner.pid, .start, .boot, .machine
LABEL_EXPIRES = "grainchain.snapshot.expires"
_SANDBOX_ID = re.compile(r"gc-[0-9a-f]{16}")


def owner_labels(settings: Any) -> dict[str, str]:
    """The labels of a container or volume this process makes now."""
    return {
        LABEL_NAMESPACE: ownership.namespace_of(settings),
        **ownership.Owner.current().labels(LABEL_OWNER),
    }


def snapshot_labels(settings: Any) -> dict[str, str]:
    expires = ownership.expiry(settings)
    return {
        LABEL_NAMESPACE: ownership.namespace_of(settings),
        LABEL_EXPIRES: "" if expires is None else expires.isoformat(),
    }


def _record(state_dir: Path, sandbox_id: str) -> Path | None:
    if not _SANDBOX_ID.fullmatch(sandbox_id):
        return None
    return state_dir / "docker" / "owners" / f"{sandbox_id}.json"


def record_owner(state_dir: Path, sandbox_id: str, owned: bool) -> None:
    """This process owns the sandbox now (connect), or nobody does (detach). Best effort."""
    path = _record(state_dir, sandbox_id)
    if path is None:
        return
    data = {"owner": ownership.Owner.current().stored() if owned else None}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


def forget_owner(state_dir: Path, sandbox_id: str) -> None:
    path = _record(state_dir, sandbox_id)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def owner_of(state_dir: Path, sandbox_id: str, labels: dict[str, str]) -> tuple[bool, ownership.Owner | None]:
    """(detached, owner): the record in the state dir when there is one, else the labels."""
    path = _record(state_dir, sandbox_id)
    if path is not None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "owner" in data:
                if data["owner"] is None:
                    return True, None
                return False, ownership.Owner.from_stored(data["owner"])
    return False, ownership.Owner.from_labels(labels, LABEL_OWNER)
