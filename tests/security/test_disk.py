"""Disk exhaustion: a sandbox writing an endless file must hit its own quota, not fill the host's disk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _attacks import BUSYBOX, isolated_sandbox, require_docker

from grainchain import SandboxConfig
from grainchain.errors import CapabilityError, ConfigurationError
from grainchain.sync import Sandbox

MIB = 1 << 20
LIMIT = 64 * MIB
SLACK = 16 * MIB  # filesystem metadata, rounding of the quota
HOST_SLACK = 128 * MIB  # the host's free space may also move with other work on the machine
# 300 MiB in files of 40 MiB (a per-file size limit is no quota), stopping at the first failed write
FILL = (
    "rc=0; for i in 0 1 2 3 4 5 6 7; do dd if=/dev/zero of={dir}/big$i bs=1048576 count=40 || {{ rc=1; break; }};"
    " done; echo rc=$rc; cat {dir}/big* | wc -c"
)
FULL = ("no space left on device", "disk quota exceeded")
DEFAULT_CEILING = 16 << 30


def host_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(sandbox: Any, directory: str, free_at: Path) -> list[str]:
    """Write 320 MiB of zeros in files under `directory` in the sandbox; the problems seen (a quota of
    LIMIT expected)."""
    before = host_free(free_at)
    result = sandbox.execute(FILL.format(dir=directory), timeout=120)
    dropped = before - host_free(free_at)
    lines = result.stdout.split()
    written = int(lines[-1]) if lines and lines[-1].isdigit() else -1
    problems = []
    if "rc=0" in result.stdout:
        problems.append(f"writing 320 MiB to {directory} succeeded ({written} bytes)")
    elif not any(text in result.stderr.lower() for text in FULL):
        problems.append(f"writing to {directory} failed otherwise: {result.stdout!r} {result.stderr!r}")
    if written > LIMIT + SLACK:
        problems.append(f"the files in {directory} grew to {written // MIB} MiB (limit 64 MiB)")
    if dropped > LIMIT + HOST_SLACK:
        problems.append(f"the host lost {dropped // MIB} MiB of free space")
    sandbox.execute(f"rm -f {directory}/big*")
    return problems


@pytest.mark.parametrize("where", ["/workspace", "/tmp"])
def test_local_disk_limit_stops_fill(where: str, state_dir: Path) -> None:
    """Fills /workspace or /tmp of a local sandbox created with disk_limit 64MiB. A vulnerable grainchain
    rejects or ignores the limit, and the sandbox fills the host's disk."""
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        with isolated_sandbox(SandboxConfig(provider_config={"disk_limit": "64MiB"})) as sandbox:
            problems = fill(sandbox, where, state_dir)
    except (ConfigurationError, CapabilityError) as exc:
        problems = [f"the local provider refused disk_limit: {exc}"]
    assert not problems, f"disk fill of {where} with disk_limit 64MiB: {problems}"


@pytest.mark.parametrize("where", ["/workspace", "/tmp"])
def test_local_default_disk_quota(where: str) -> None:
    """Asks `df` inside a default local sandbox how big its /workspace or /tmp is. A vulnerable grainchain
    gives the sandbox the host's whole disk (no default quota): any sandbox can fill it."""
    host_size = os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    with isolated_sandbox() as sandbox:
        result = sandbox.execute(f"df -B1 -P {where} | tail -1")
    fields = result.stdout.split()
    size = int(fields[1]) if len(fields) >= 2 and fields[1].isdigit() else None
    if size is None:
        pytest.fail(f"df {where} inside the sandbox: {result.stdout!r} {result.stderr!r}")
    bounded = size <= min(DEFAULT_CEILING, host_size - 1)
    assert bounded, (
        f"{where} in a default sandbox is {size / (1 << 30):.1f} GiB (host disk {host_size / (1 << 30):.1f} "
        "GiB): no default disk quota"
    )


def test_docker_disk_limit_enforced_or_refused(tmp_path: Path) -> None:
    """Fills the working directory and /tmp of a docker sandbox created with disk_limit 64MiB. A vulnerable
    grainchain rejects the key as unknown or passes it to an engine that silently ignores it (overlay2
    without project quotas), so the container fills the host's disk. Refusing the limit with a
    Configuration/CapabilityError that names the storage driver is fine."""
    require_docker()
    config = SandboxConfig(image=BUSYBOX, provider_config={"disk_limit": "64MiB"})
    try:
        sandbox = Sandbox("docker", config).start()
    except (ConfigurationError, CapabilityError) as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        why = refused.lower()
        if "storage" not in why or "unknown" in why:
            pytest.fail(
                f"disk_limit refused, but not because the storage driver cannot enforce it: {refused}"
            )
        return
    info = ["docker", "info", "--format", "{{.DockerRootDir}}"]
    root = Path(subprocess.run(info, capture_output=True, text=True, check=True).stdout.strip())
    try:
        workdir = sandbox.execute("pwd").stdout.strip() or "/"
        problems = fill(sandbox, workdir.rstrip("/") or "/", root)
        problems += fill(sandbox, "/tmp", root)
    finally:
        sandbox.close()
    assert not problems, f"docker disk fill with disk_limit 64MiB: {problems}"
