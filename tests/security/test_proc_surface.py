"""Attacks through /proc from inside a default local sandbox (the client runs as root): kernel settings the
sandbox may change for the whole host, kernel files it may read, and host paths its mount table reveals."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from _attacks import isolated_sandbox, python_in

# Sysctls whose CURRENT host value the sandbox tries to write back: harmless as a probe, but a sandbox
# that may write kernel.core_pattern = "|<host path of its overlay upper dir>/x.sh" runs x.sh on the host
# as root at the next crash.
SYSCTLS = ["kernel/core_pattern", "vm/swappiness", "kernel/core_uses_pid", "fs/protected_symlinks"]

WRITE_BACK = r"""
import json, sys
path, value = json.loads(sys.argv[1])
try:
    with open(path, "w") as f:
        f.write(value)
    print("written")
except OSError as exc:
    print("refused", exc.errno)
"""


@pytest.mark.parametrize("sysctl", SYSCTLS)
def test_sandbox_cannot_write_sysctl(sysctl: str) -> None:
    """Writes the host's current value of a sysctl back from inside the sandbox; a vulnerable grainchain
    (/proc/sys mounted read-write, no capability dropped for it) lets the write succeed: host root code
    execution through kernel.core_pattern."""
    path = Path("/proc/sys") / sysctl
    before = path.read_text()
    try:
        with isolated_sandbox() as sandbox:
            sandbox.upload_file(".write_back.py", WRITE_BACK)
            arg = shlex.quote(json.dumps([str(path), before]))
            result = sandbox.execute(f"python3 .write_back.py {arg}")
        after = path.read_text()
        assert after == before, f"{sysctl} changed on the host: {before!r} -> {after!r}"
        assert "written" not in result.stdout, (
            f"the sandbox wrote the host sysctl {sysctl} ({result.stdout.strip()}): it could set "
            "kernel.core_pattern to a pipe into its own files and run them as host root"
        )
    finally:
        if path.read_text() != before:
            path.write_text(before)


def test_sysrq_trigger_not_writable() -> None:
    """Checks (`test -w`, never a write) whether /proc/sysrq-trigger is writable inside the sandbox; a
    vulnerable grainchain lets the sandbox reboot or crash the host with one byte."""
    with isolated_sandbox() as sandbox:
        result = sandbox.execute("test -w /proc/sysrq-trigger && echo writable || echo not-writable")
    assert result.stdout.strip() == "not-writable", "/proc/sysrq-trigger is writable inside the sandbox"


READ_MASKED = r"""
import json, os, sys
path = sys.argv[1]
try:
    with open(path, "rb") as f:
        data = f.read(4096)
    print(json.dumps({"read": len(data)}))
except OSError as exc:
    print(json.dumps({"error": exc.errno}))
"""


@pytest.mark.parametrize("name", ["kcore", "keys", "timer_list", "sched_debug"])
def test_masked_proc_file_unreadable(name: str) -> None:
    """Reads a /proc file that docker masks (kernel memory, every key on the host, kernel timers,
    scheduler internals of all host tasks); a vulnerable grainchain returns its content."""
    with isolated_sandbox() as sandbox:
        sandbox.upload_file(".read_masked.py", READ_MASKED)
        seen = json.loads(sandbox.execute(f"python3 .read_masked.py /proc/{name}").stdout)
    assert seen.get("read", 0) == 0, (
        f"/proc/{name} is readable inside the sandbox ({seen['read']} bytes read)"
    )


ST_RDONLY = 1


@pytest.mark.parametrize("directory", ["sys", "irq", "bus", "fs"])
def test_proc_kernel_dir_read_only(directory: str) -> None:
    """Asks statvfs() inside the sandbox whether /proc/<dir> is on a read-only mount (docker mounts
    /proc/sys, /proc/irq, /proc/bus and /proc/fs read-only); a vulnerable grainchain leaves it writable,
    so the sandbox's root may retune the host kernel (IRQ affinity, sysctls, filesystem knobs)."""
    with isolated_sandbox() as sandbox:
        out = python_in(sandbox, f"import os; print(os.statvfs('/proc/{directory}').f_flag)")
    assert int(out) & ST_RDONLY, f"/proc/{directory} is mounted read-write inside the sandbox"


@pytest.mark.parametrize("table", ["/proc/self/mountinfo", "/proc/1/mountinfo", "/proc/self/mounts"])
def test_mount_table_hides_host_paths(table: str, state_dir: Path) -> None:
    """Reads the sandbox's mount table; a vulnerable grainchain shows the host paths of its state dir and
    of the sandbox's own directory (its overlay upper dir: the path to put into kernel.core_pattern)."""
    state = state_dir.resolve()
    with isolated_sandbox() as sandbox:
        text = sandbox.execute(f"cat {table}").stdout
        sandbox_id = sandbox.sandbox_id
    assert text.strip(), f"{table} is empty: the probe read nothing"
    tail = "/".join(state.parts[-2:])
    leaks = [needle for needle in (str(state), tail, sandbox_id) if needle in text]
    lines = [line for line in text.splitlines() if any(needle in line for needle in leaks)]
    assert not leaks, f"{table} inside the sandbox reveals host paths {leaks}: " + "\n".join(lines[:3])
