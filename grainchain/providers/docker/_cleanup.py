"""What `grainchain sandboxes / snapshots / cleanup` do for the docker provider (blocking, one engine client).

Only what carries grainchain's labels and this namespace (grainchain/providers/docker/_owners.py) is seen:

* a container whose owner (its owner record in this state dir, else its labels) is provably dead, not
  detached, not made to outlive its client (keep_alive, auto_cleanup=False in its config label): removed
  with its anonymous volumes and the named volumes made for it;
* a named volume made for a sandbox whose container is gone, when its creator is dead (a create that was
  killed between the two);
* a dangling snapshot image of this namespace (a snapshot deleted while a container still used it);
* an owner record of a container that is gone.

A container or volume without owner labels (made before they were) is never removed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grainchain import _ownership as ownership
from grainchain.errors import SandboxNotFoundError, SnapshotNotFoundError
from grainchain.models import SandboxConfig, SnapshotKind
from grainchain.providers.docker import _engine as dk
from grainchain.providers.docker import _owners
from grainchain.providers.docker._sync.adapter import _drop_checkpoint, _Engine
from grainchain.settings import Settings

PROVIDER = "docker"


@contextmanager
def engine() -> Iterator[_Engine]:
    client = _Engine()
    try:
        yield client
    finally:
        client.close()


def _labelled(client: _Engine, path: str, what: str, labels: list[str], **extra: Any) -> Any:
    filters = json.dumps({"label": labels, **extra})
    params = {"filters": filters, **({"all": "1"} if path == "/containers/json" else {})}
    return client.json("GET", path, what, params=params)


def _containers(client: _Engine, settings: Settings) -> list[dict[str, Any]]:
    found = _labelled(client, "/containers/json", "list containers", [f"{dk.LABEL}=1", dk.LABEL_SANDBOX])
    return [
        c
        for c in found or []
        if ownership.belongs((c.get("Labels") or {}).get(_owners.LABEL_NAMESPACE), settings)
    ]


def _kept(labels: dict[str, str]) -> bool:
    try:
        config = SandboxConfig.model_validate_json(labels[dk.LABEL_CONFIG])
    except (KeyError, ValueError):
        return True  # unknown: assume it was meant to stay
    return config.keep_alive or not config.auto_cleanup


def _record(settings: Settings, container: dict[str, Any]) -> ownership.SandboxRecord:
    labels: dict[str, str] = container.get("Labels") or {}
    sandbox_id = labels.get(dk.LABEL_SANDBOX, "")
    detached, owner = _owners.owner_of(settings.state_dir.resolve(), sandbox_id, labels)
    return ownership.SandboxRecord(
        provider=PROVIDER,
        sandbox_id=sandbox_id,
        status=str(container.get("State", "")),
        created_at=datetime.fromtimestamp(int(container.get("Created", 0)), UTC),
        owner=owner,
        detached=detached,
        kept=_kept(labels),
        detail=str(container.get("Id", ""))[:12],
    )


def sandbox_records(settings: Settings) -> list[ownership.SandboxRecord]:
    with engine() as client:
        return [_record(settings, c) for c in _containers(client, settings)]


def _remove_sandbox(client: _Engine, settings: Settings, sandbox_id: str) -> None:
    found = _labelled(
        client, "/containers/json", "list containers", [f"{dk.LABEL}=1", f"{dk.LABEL_SANDBOX}={sandbox_id}"]
    )
    for container in found or []:
        with contextlib.suppress(dk.EngineNotFoundError):
            client.request(
                "DELETE",
                f"/containers/{container['Id']}",
                "remove container",
                params={"force": "1", "v": "1"},
            )
    volumes = _labelled(client, "/volumes", "list volumes", [f"{dk.LABEL_SANDBOX}={sandbox_id}"])
    for volume in (volumes or {}).get("Volumes") or []:
        with contextlib.suppress(dk.EngineNotFoundError):
            client.request("DELETE", f"/volumes/{volume['Name']}", "remove volume")
    _owners.forget_owner(settings.state_dir.resolve(), sandbox_id)


def close_sandbox(settings: Settings, sandbox_id: str) -> None:
    """Remove a sandbox of this namespace: its containers and volumes (SandboxNotFoundError if none)."""
    with engine() as client:
        if not any(
            (c.get("Labels") or {}).get(dk.LABEL_SANDBOX) == sandbox_id for c in _containers(client, settings)
        ):
            raise SandboxNotFoundError(f"no docker sandbox with id {sandbox_id!r}", provider=PROVIDER)
        _remove_sandbox(client, settings, sandbox_id)


def leftovers(settings: Settings) -> list[ownership.Leftover]:
    """Everything `grainchain cleanup` would remove on the engine for this namespace (engine unreachable:
    ProviderUnavailableError)."""
    with engine() as client:
        return _leftovers(client, settings)


def _leftovers(client: _Engine, settings: Settings) -> list[ownership.Leftover]:
    found: list[ownership.Leftover] = []

    def remove_sandbox(sandbox_id: str) -> None:
        with engine() as own:
            _remove_sandbox(own, settings, sandbox_id)

    containers = _containers(client, settings)
    present = {(c.get("Labels") or {}).get(dk.LABEL_SANDBOX) for c in containers}
    for container in containers:
        record = _record(settings, container)
        if record.reapable:
            assert record.owner is not None
            found.append(
                ownership.Leftover(
                    PROVIDER,
                    "container",
                    f"{record.sandbox_id} ({record.detail})",
                    f"owner pid {record.owner.pid} is gone ({record.status})",
                    lambda sid=record.sandbox_id: remove_sandbox(sid),  # type: ignore[misc]
                )
            )
    volumes = _labelled(client, "/volumes", "list volumes", [f"{dk.LABEL}=1", dk.LABEL_SANDBOX])
    for volume in (volumes or {}).get("Volumes") or []:
        labels: dict[str, str] = volume.get("Labels") or {}
        owner = ownership.Owner.from_labels(labels, _owners.LABEL_OWNER)
        if (
            labels.get(dk.LABEL_SANDBOX) not in present
            and ownership.belongs(labels.get(_owners.LABEL_NAMESPACE), settings)
            and owner is not None
            and owner.state() == "dead"
        ):
            name = str(volume["Name"])
            found.append(
                ownership.Leftover(
                    PROVIDER,
                    "volume",
                    name,
                    f"its sandbox {labels.get(dk.LABEL_SANDBOX)} is gone",
                    lambda n=name: _delete(f"/volumes/{n}", "remove volume"),  # type: ignore[misc]
                )
            )
    dangling = _labelled(client, "/images/json", "list images", [f"{dk.LABEL_SNAPSHOT}=1"], dangling=["true"])
    for image in dangling or []:
        if ownership.belongs((image.get("Labels") or {}).get(_owners.LABEL_NAMESPACE), settings):
            image_id = str(image["Id"])
            found.append(
                ownership.Leftover(
                    PROVIDER,
                    "image",
                    image_id.removeprefix("sha256:")[:12],
                    "a deleted snapshot's image",
                    lambda i=image_id: _delete(f"/images/{i}", "remove image"),  # type: ignore[misc]
                )
            )
    records = settings.state_dir.resolve() / "docker" / "owners"
    for path in sorted(records.glob("gc-*.json")) if records.is_dir() else []:
        if path.stem not in present:
            found.append(
                ownership.Leftover(
                    PROVIDER,
                    "record",
                    str(path),
                    "its container is gone",
                    lambda p=path: p.unlink(missing_ok=True),  # type: ignore[misc]
                )
            )
    return found


def _delete(path: str, what: str) -> None:
    with engine() as client, contextlib.suppress(dk.EngineNotFoundError):
        client.request("DELETE", path, what)


# -- snapshots ------------------------------------------------------------------------------------------


def snapshot_records(settings: Settings) -> list[ownership.SnapshotRecord]:
    with engine() as client:
        images = _labelled(client, "/images/json", "list snapshots", [f"{dk.LABEL_SNAPSHOT}=1"])
    records = []
    for image in images or []:
        labels: dict[str, str] = image.get("Labels") or {}
        if not ownership.belongs(labels.get(_owners.LABEL_NAMESPACE), settings):
            continue
        for ref in image.get("RepoTags") or []:
            if ref.startswith(dk.SNAPSHOT_REPO + ":"):
                records.append(
                    ownership.SnapshotRecord(
                        provider=PROVIDER,
                        snapshot_id=ref,
                        kind=labels.get(dk.LABEL_KIND) or SnapshotKind.filesystem.value,
                        created_at=dk.image_created(image.get("Created", 0)),
                        expires_at=ownership.parse_time(labels.get(_owners.LABEL_EXPIRES)),
                        size_bytes=image.get("Size"),
                        source_sandbox_id=labels.get(dk.LABEL_SOURCE),
                    )
                )
    return sorted(records, key=lambda r: r.created_at or datetime.min.replace(tzinfo=UTC))


def delete_snapshot(settings: Settings, snapshot_id: str) -> None:
    """SnapshotNotFoundError for an unknown id or another namespace's."""
    repo, _, tag = snapshot_id.rpartition(":")
    if repo != dk.SNAPSHOT_REPO or not dk.SNAPSHOT_TAG.fullmatch(tag):
        raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
    with engine() as client:
        try:
            image = client.json("GET", f"/images/{snapshot_id}/json", "inspect snapshot")
        except dk.EngineNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER) from None
        labels: dict[str, str] = (image.get("Config") or {}).get("Labels") or {}
        if labels.get(dk.LABEL_SNAPSHOT) != "1" or not ownership.belongs(
            labels.get(_owners.LABEL_NAMESPACE), settings
        ):
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER)
        try:
            client.request("DELETE", f"/images/{snapshot_id}", "delete snapshot", params={"force": "1"})
        except dk.EngineNotFoundError:
            raise SnapshotNotFoundError(snapshot_id, provider=PROVIDER) from None
    if labels.get(dk.LABEL_KIND) == SnapshotKind.memory.value:
        store = str(Path(settings.state_dir) / "docker" / "checkpoints")
        _drop_checkpoint(store, labels.get(dk.LABEL_CHECKPOINT))


def expired_snapshots(settings: Settings, now: datetime | None = None) -> list[ownership.SnapshotRecord]:
    return [r for r in snapshot_records(settings) if ownership.expired(r.expires_at, now)]
