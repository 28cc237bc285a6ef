"""Who owns a sandbox or snapshot, and whether that owner still lives (flavour-free, blocking, cheap).

* A sandbox records its *owner*: the client process driving it (pid, that process's start time, the boot
  id and machine id). The owner is dead when, on this machine, the boot id differs (a reboot) or the pid is
  gone or now names a process that started at another time (pid reuse). On another machine it is unknown:
  nothing is reaped then. A detached sandbox (`detach()`, keep_alive) has no owner: it is never reaped.
* A snapshot belongs to a *namespace* (settings.namespace; default: a tag of the state dir, so each state
  dir, i.e. each user or project by default, has its own) and may carry an expiry (settings.snapshot_ttl).
  A snapshot recorded without a namespace (made before namespaces existed) belongs to the default one.

Local keeps these in meta.json (grainchain/providers/local/_localfs.py), docker in labels of its
containers, volumes and snapshot images (grainchain/providers/docker/_cleanup.py); `grainchain cleanup`
(grainchain/cli.py) reaps what a dead owner left.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

OwnerState = Literal["alive", "dead", "unknown"]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


@functools.cache
def boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


@functools.cache
def machine_id() -> str:
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or socket.gethostname()


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), None when gone (or
    a zombie: it has ended, only its exit status is left)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True)
class Owner:
    pid: int
    start: str | None = None  # None: recorded before start times were (only the pid is known)
    boot: str | None = None
    machine: str | None = None

    @classmethod
    def current(cls) -> Owner:
        return _current(os.getpid())

    def stored(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot, "machine": self.machine}

    @classmethod
    def from_stored(cls, data: Any) -> Owner | None:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        fields = {k: data.get(k) for k in ("start", "boot", "machine")}
        if not all(v is None or isinstance(v, str) for v in fields.values()):
            return None
        return cls(data["pid"], **fields)

    def labels(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}.{k}": str(v) for k, v in self.stored().items() if v is not None}

    @classmethod
    def from_labels(cls, labels: dict[str, str], prefix: str) -> Owner | None:
        pid = labels.get(f"{prefix}.pid", "")
        if not pid.isdigit():
            return None
        return cls(int(pid), *(labels.get(f"{prefix}.{k}") or None for k in ("start", "boot", "machine")))

    def state(self) -> OwnerState:
        if self.machine is not None and self.machine != machine_id():
            return "unknown"  # another machine (a remote engine's other clients)
        if self.boot is not None and self.boot != boot_id():
            # this machine rebooted since (or, without a machine id, maybe another machine: unknown)
            return "dead" if self.machine is not None else "unknown"
        started = process_start(self.pid)
        if started is None:
            return "dead"
        if self.start is not None and started != self.start:
            return "dead"  # the pid now names another process
        return "alive"


@functools.cache
def _current(pid: int) -> Owner:  # (per pid: a forked child is another owner)
    return Owner(pid, process_start(pid), boot_id(), machine_id())


def state_tag(state_dir: Path) -> str:
    """A short stable tag of a (resolved) state dir; the same hash as the local provider's process marker."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]


def default_namespace(state_dir: Path) -> str:
    return f"state-{state_tag(state_dir.resolve())}"


def namespace_of(settings: Any) -> str:
    """The namespace snapshots (and docker sandboxes) are made, listed and deleted in."""
    return str(settings.namespace or default_namespace(settings.state_dir))


def belongs(recorded: str | None, settings: Any) -> bool:
    """Whether something recorded with namespace `recorded` (None or "": made before namespaces) is in the
    settings' namespace."""
    if recorded:
        return recorded == namespace_of(settings)
    return namespace_of(settings) == default_namespace(settings.state_dir)


def expiry(settings: Any, now: datetime | None = None) -> datetime | None:
    """When a snapshot made now expires (settings.snapshot_ttl), or None."""
    ttl = settings.snapshot_ttl
    if ttl is None:
        return None
    return (now or datetime.now(UTC)) + timedelta(seconds=float(ttl))


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expired(expires_at: datetime | None, now: datetime | None = None) -> bool:
    return expires_at is not None and expires_at <= (now or datetime.now(UTC))


@dataclass
class SandboxRecord:
    """A sandbox as `grainchain sandboxes` and `grainchain cleanup` see it."""

    provider: str
    sandbox_id: str
    status: str
    created_at: datetime | None
    owner: Owner | None
    detached: bool  # let go of by detach(): nobody owns it, nothing reaps it
    kept: bool  # keep_alive or auto_cleanup=False: meant to outlive its client
    detail: str = ""

    @property
    def owner_state(self) -> str:
        if self.detached:
            return "detached"
        return "unknown" if self.owner is None else self.owner.state()

    @property
    def reapable(self) -> bool:
        """Its owner is provably dead and it was not meant to outlive it."""
        return not self.kept and not self.detached and self.owner is not None and self.owner.state() == "dead"


@dataclass
class Leftover:
    """Something `grainchain cleanup` removes: what it is, and how."""

    provider: str
    kind: str  # sandbox, staging, probe, container, volume, image, record
    name: str
    why: str
    remove: Callable[[], None]


@dataclass
class SnapshotRecord:
    provider: str
    snapshot_id: str
    kind: str
    created_at: datetime | None
    expires_at: datetime | None
    size_bytes: int | None
    source_sandbox_id: str | None
