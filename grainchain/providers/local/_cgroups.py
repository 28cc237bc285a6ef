"""Resource limits of local sandboxes (flavour-free): one cgroup per sandbox, rlimits where there are none.

cgroup v1 (one hierarchy per controller) or v2 (one unified tree), whichever has the controllers a sandbox
needs and lets us create directories; the sandbox's cgroup sits below ours (v1) or below
<mount>/grainchain (v2, whose "no internal processes" rule forbids a child of a busy cgroup). Processes
are placed in it by a launcher shell before they exec what they run (`echo $$ > cgroup.procs; exec ...`),
so even a program's first fork is counted. Where no cgroup can be made (not root, v2 not delegated), an
rlimit launcher (`prlimit`) gives a weaker version of the memory and process limits: RLIMIT_AS caps each
process's address space rather than the sandbox's total, and RLIMIT_NPROC counts every process of the user
(root ignores it). No rlimit can cap CPU rate.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainchain.providers.local._hostproc import stop_then_kill

CPU_PERIOD_US = 100_000
THREAD_CONTROLLERS = ("pids", "cpu")  # the v1 controllers a spawner thread steps into
_probe_cache: dict[str, Any] = {}


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes
    cpu: float | None = None  # cores
    pids: int | None = None
    # A cpu cgroup without a quota: the sandbox's processes then compete for CPU as one group, not one by
    # one, so that a fork bomb of busy processes cannot starve the host (nor the kill that ends it).
    cpu_group: bool = False

    def controllers(self) -> list[str]:
        wanted = [("memory", self.memory), ("cpu", self.cpu or self.cpu_group or None), ("pids", self.pids)]
        return [name for name, value in wanted if value is not None]


def _mounts() -> Iterator[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                yield left.split()[4], fstype, set(options.split(","))


def _own_paths() -> dict[str, str]:
    """Our cgroup per v1 controller, and under "" the v2 one, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _v1_parents(controllers: list[str]) -> dict[str, Path] | None:
    own = _own_paths()
    parents = {}
    for name in controllers:
        mount = next((m for m, fstype, opts in _mounts() if fstype == "cgroup" and name in opts), None)
        if mount is None or name not in own:
            return None
        parents[name] = Path(mount) / own[name].lstrip("/") / "grainchain"
    return parents


def _v2_parent(controllers: list[str]) -> Path | None:
    mount = next((m for m, fstype, _ in _mounts() if fstype == "cgroup2"), None)
    if mount is None:
        return None
    try:
        available = Path(mount, "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if not set(controllers) <= set(available):
        return None
    parent = Path(mount) / "grainchain"
    enable = " ".join(f"+{c}" for c in controllers)
    try:  # the root may hold processes; our own cgroup may not, once it has children with controllers
        Path(mount, "cgroup.subtree_control").write_text(enable)
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(enable)
    except OSError:
        return None
    return parent


def unavailable(limits: Limits) -> str | None:
    """Why the limits cannot be put in a cgroup here (None when they can); probed once per set of
    controllers by making (and removing) a cgroup."""
    controllers = limits.controllers()
    key = ",".join(controllers)
    if not controllers:
        return None
    if key not in _probe_cache:
        _probe_cache[key] = _probe(controllers)
    reason: str | None = _probe_cache[key]
    return reason


def _probe(controllers: list[str]) -> str | None:
    probe = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    parents = _v1_parents(controllers)
    if parents is not None:
        made: list[Path] = []
        try:
            for parent in parents.values():
                (parent / probe).mkdir(parents=True)
                made.append(parent / probe)
            return None
        except OSError as exc:
            return f"cannot create cgroups (v1) here: {exc}"
        finally:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()
    unified = _v2_parent(controllers)
    if unified is None:
        return f"no writable cgroup hierarchy with the {', '.join(controllers)} controller(s)"
    try:
        (unified / probe).mkdir()
        (unified / probe).rmdir()
    except OSError as exc:
        return f"cannot create cgroups (v2) here: {exc}"
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@dataclass(frozen=True)
class SandboxCgroup:
    """The cgroup(s) of one sandbox: one directory per v1 controller, or one v2 directory."""

    version: int
    dirs: dict[str, str]  # controller (v2: "unified") -> directory

    @classmethod
    def create(cls, sandbox_id: str, limits: Limits) -> SandboxCgroup:
        controllers = limits.controllers()
        parents = _v1_parents(controllers)
        if parents is not None:
            group = cls(1, {name: str(parent / sandbox_id) for name, parent in parents.items()})
        else:
            parent = _v2_parent(controllers)
            if parent is None:
                raise OSError("no writable cgroup hierarchy")
            group = cls(2, {"unified": str(parent / sandbox_id)})
        try:
            for path in group.dirs.values():
                Path(path).mkdir(parents=True)
            group._set(limits)
        except BaseException:
            group.remove()
            raise
        return group

    def _set(self, limits: Limits) -> None:
        d = {name: Path(path) for name, path in self.dirs.items()}
        if self.version == 1:
            if limits.memory is not None:
                _write(d["memory"] / "memory.limit_in_bytes", str(limits.memory))
                swap = d["memory"] / "memory.memsw.limit_in_bytes"
                if swap.exists():  # with swap accounting, also cap memory+swap: over the limit means killed
                    _write(swap, str(limits.memory))
            if limits.cpu is not None:
                _write(d["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(d["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu * CPU_PERIOD_US))))
            if limits.pids is not None:
                _write(d["pids"] / "pids.max", str(limits.pids))
        else:
            u = d["unified"]
            if limits.memory is not None:
                _write(u / "memory.max", str(limits.memory))
                with contextlib.suppress(OSError):
                    _write(u / "memory.swap.max", "0")
            if limits.cpu is not None:
                _write(u / "cpu.max", f"{max(1000, int(limits.cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            if limits.pids is not None:
                _write(u / "pids.max", str(limits.pids))

    @classmethod
    def named(cls, sandbox_id: str) -> SandboxCgroup | None:
        """The existing cgroup create() made for `sandbox_id` (found by name: for a sandbox whose creator
        died before it recorded the group), or None."""
        every = ["cpu", "memory", "pids"]
        parents = _v1_parents(every) or {}
        found = {name: str(p / sandbox_id) for name, p in parents.items() if (p / sandbox_id).is_dir()}
        if found:
            return cls(1, found)
        parent = _v2_parent([])
        if parent is not None and (parent / sandbox_id).is_dir():
            return cls(2, {"unified": str(parent / sandbox_id)})
        return None

    def stored(self) -> dict[str, Any]:
        return {"version": self.version, "dirs": dict(self.dirs)}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> SandboxCgroup:
        return cls(int(data["version"]), {str(k): str(v) for k, v in data["dirs"].items()})

    def exists(self) -> bool:
        return all(os.path.isdir(path) for path in self.dirs.values())

    def thread_tasks(self) -> list[str]:
        """The v1 `tasks` files a spawner thread joins (grainchain/providers/local/_spawner.py): the pids and cpu
        controllers' (never memory's: see the spawner). Empty on v2, where the threads of a process cannot be
        in different (domain) cgroups."""
        if self.version != 1:
            return []
        return [str(Path(self.dirs[name]) / "tasks") for name in THREAD_CONTROLLERS if name in self.dirs]

    def launcher(self, *, besides_thread: bool = False) -> list[str]:
        """argv prefix: put the launching shell in the cgroup(s), then exec the rest of the argv. With
        `besides_thread`, only the cgroups a spawner thread does not already hold its children in (empty
        when there are none: no shell at all)."""
        placed = set(THREAD_CONTROLLERS) if besides_thread and self.version == 1 else set()
        dirs = [p for name, p in self.dirs.items() if name not in placed]
        if not dirs:
            return []
        moves = " && ".join(f"echo $$ > {shlex.quote(str(Path(p) / 'cgroup.procs'))}" for p in dirs)
        return ["/bin/sh", "-c", f'{moves} && exec "$@"', "grainchain-cgroup"]

    def adopt(self, pids: list[int]) -> None:
        """Move running processes (restored by CRIU) into the cgroup(s)."""
        for path in self.dirs.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, OSError):
                    _write(Path(path) / "cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over the memory limit, so far."""
        if self.version == 1:
            if "memory" not in self.dirs:
                return 0
            source = Path(self.dirs["memory"]) / "memory.oom_control"
        else:
            source = Path(self.dirs["unified"]) / "memory.events"
        try:
            for line in source.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def pids(self) -> list[int]:
        """The sandbox's processes. On v1 a client's spawner thread sits in the pids cgroup too, which
        lists its whole process in cgroup.procs: a process counts only when its main thread (tid = pid)
        is in the cgroup, which a client's never is."""
        found: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                procs = {int(p) for p in Path(path, "cgroup.procs").read_text().split()}
                if self.version == 1:
                    procs &= {int(t) for t in Path(path, "tasks").read_text().split()}
                found |= procs
        return sorted(found)

    def kill_all(self, within: float = 5.0) -> None:
        """SIGKILL every process of the sandbox; stopped first, round after round until no new one
        appears, so that a fork bomb cannot outrun the kill (see _hostproc.stop_then_kill)."""
        stop_then_kill(self.pids, within=within)

    def remove(self, within: float = 2.0) -> None:
        """Kill what is left and remove the directories (best effort: closing must not fail)."""
        deadline = time.monotonic() + within
        for path in self.dirs.values():
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:  # EBUSY while killed processes are still exiting
                    self.kill_all(within=0.5)
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.001)


def rlimit_launcher(limits: Limits) -> list[str]:
    """argv prefix applying the rlimit stand-ins of memory and process limits (see the module doc)."""
    args = []
    if limits.memory is not None:
        args.append(f"--as={limits.memory}")
    if limits.pids is not None:
        args.append(f"--nproc={limits.pids}")
    return ["prlimit", *args, "--"] if args else []


def machine_cpus() -> tuple[float, str]:
    """The cores a local sandbox can have, and why: the CPUs this process may run on, lowered by a CPU quota
    of its own cgroup (a container's `--cpus`), below which every sandbox's cgroup sits."""
    cpus = float(len(os.sched_getaffinity(0)))
    why = f"this machine lets grainchain run on {cpus:g} CPUs (sched_getaffinity)"
    own = _own_paths()
    for mount, fstype, options in _mounts():
        try:
            if fstype == "cgroup2" and "" in own:
                quota, period = Path(mount, own[""].lstrip("/"), "cpu.max").read_text().split()
            elif fstype == "cgroup" and "cpu" in options and "cpu" in own:
                base = Path(mount, own["cpu"].lstrip("/"))
                quota = (base / "cpu.cfs_quota_us").read_text().strip()
                period = (base / "cpu.cfs_period_us").read_text().strip()
            else:
                continue
            if quota in ("max", "-1") or int(period) <= 0 or int(quota) / int(period) >= cpus:
                continue
        except (OSError, ValueError):
            continue
        cpus = int(quota) / int(period)
        why = f"grainchain's own cgroup has a CPU quota of {cpus:g} cores"
    return cpus, why
