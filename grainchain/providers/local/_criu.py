"""Memory snapshots of local sandboxes with CRIU (flavour-free).

A sandbox's processes are the tree under its holder (pid 1 of its pid namespace, see
grainchain/providers/local/_isolation.py); `criu dump` captures that tree with its namespaces, `criu restore` makes it again
on the same kind of mounts: the root is the sandbox's rootfs/ directory (--root), /workspace and /tmp are
the restoring sandbox's (external mounts named "workspace" and "tmp"), the host's system directories and
device nodes are found again at their host paths (--ext-mount-map auto). Root only, CRIU 4 or newer.
Restored processes land in our cgroups (--manage-cgroups=ignore); the caller moves them into the sandbox's.

Not captured: commands still attached to a handle or an execute() (nsenter, their parent, is outside the
sandbox); their output pipes lead to this process. What a command left running in the background is a
child of pid 1 and is captured.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from grainchain.errors import ProviderError
from grainchain.providers import _criu as criu_probe

PROVIDER = "local"
_COMMON = [
    "--manage-cgroups=ignore",
    "--ext-mount-map", "auto",
    "--enable-external-sharing",
    "--enable-external-masters",
    "-v2",
]  # fmt: skip


def criu_path() -> str | None:
    return criu_probe.criu_path()


def unavailable() -> str | None:
    """Why memory snapshots cannot be taken here (None when they can); probed once per process."""
    if os.geteuid() != 0:
        return "CRIU needs root"
    criu = criu_path()
    if criu is None:
        return "criu is not installed (CRIU 4 or newer; .ci/docker-up builds one)"
    return criu_probe.problem(criu)


def _run(args: list[str], images: Path, log: str) -> None:
    criu = criu_path()
    if criu is None:
        raise ProviderError("criu is not installed", provider=PROVIDER)
    done = subprocess.run(
        [criu, *args, "-D", str(images), "-o", log, *_COMMON], capture_output=True, text=True
    )
    if done.returncode != 0:
        errors = ""
        with contextlib.suppress(OSError):
            lines = (images / log).read_text(errors="replace").splitlines()
            errors = "; ".join(line.split("Error", 1)[-1].strip() for line in lines if "Error" in line)[-800:]
        raise ProviderError(
            f"criu {args[0]} failed (exit {done.returncode}): {errors or done.stderr.strip()[-800:]} "
            f"(log: {images / log})",
            provider=PROVIDER,
        )


def dump(pid: int, images: Path) -> None:
    """Capture the tree under `pid` (a sandbox's pid 1) and leave it stopped (SIGSTOP): the caller takes the
    filesystem snapshot that goes with it, then resume()s it."""
    images.mkdir(parents=True, exist_ok=True)
    args = ["dump", "-t", str(pid), "--leave-stopped"]
    args += ["--external", "mnt[/workspace]:workspace", "--external", "mnt[/tmp]:tmp"]
    _run(args, images, "dump.log")


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (host pids)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending.extend(int(p) for p in f.read().split())
    return found


def resume(pid: int) -> None:
    """SIGCONT the tree a dump left stopped."""
    for member in tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, 18)  # SIGCONT


def restore(images: Path, rootfs: Path, workspace: Path, tmp: Path) -> int:
    """Make the captured tree run again (detached: nobody's child here) and return its pid 1's host pid."""
    pidfile = images / f"restored-{os.getpid()}-{time.monotonic_ns()}.pid"
    args = ["restore", "--restore-detached", "--pidfile", str(pidfile), "--root", str(rootfs)]
    args += ["--external", f"mnt[workspace]:{workspace}", "--external", f"mnt[tmp]:{tmp}"]
    try:
        _run(args, images, f"restore-{os.getpid()}.log")
        return int(pidfile.read_text())
    finally:
        pidfile.unlink(missing_ok=True)
