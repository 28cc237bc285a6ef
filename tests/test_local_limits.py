"""Resource limits of the local provider: memory_limit, cpu_limit and provider_config pids_limit, in a cgroup
per sandbox (rlimits where cgroups are not writable). Every test runs in both isolation modes.

The fork bombs here are bounded (at most a few hundred forks, each child exits by itself), so a broken limit
fails the test without taking the machine down.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _local import run_as_nobody

from grainchain import MemoryLimitExceededError, SandboxConfig
from grainchain.providers.local._cgroups import Limits, unavailable
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.sync import Sandbox

CGROUPS = unavailable(Limits(memory=1 << 30, cpu=1.0, pids=100))
MODES = ["none"] + ([] if namespaces_unavailable() else ["namespaces"])
needs_cgroups = pytest.mark.skipif(CGROUPS is not None, reason=f"no writable cgroups: {CGROUPS}")


@pytest.fixture(params=MODES)
def isolation(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


def config(isolation: str, **fields: Any) -> SandboxConfig:
    provider_config = {"isolation": isolation, **fields.pop("provider_config", {})}
    return SandboxConfig(provider_config=provider_config, **fields)


@pytest.fixture
def sandbox_dirs() -> Iterator[list[Path]]:
    """Collects a sandbox's cgroup directories (see cgroup_dirs) to check they are gone after close."""
    found: list[Path] = []
    yield found
    for path in found:
        assert not path.exists(), f"cgroup {path} left behind"


def cgroup_dirs(sandbox_id: str) -> list[Path]:
    return [Path(p) for p in subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", sandbox_id],
        capture_output=True, text=True, check=False,
    ).stdout.split()]  # fmt: skip


ALLOCATE = (
    'python3 -c \'import time; b = bytearray({mib} << 20); b[::4096] = b"x" * len(b[::4096]); print("held")\''
)


@needs_cgroups
def test_memory_limit_kills_with_a_clear_report(isolation: str, sandbox_dirs: list[Path]) -> None:
    with Sandbox("local", config(isolation, memory_limit="64MiB")) as sandbox:
        sandbox_dirs.extend(cgroup_dirs(sandbox.sandbox_id))
        assert sandbox_dirs, "no cgroup was made for the sandbox"
        assert sandbox.execute(ALLOCATE.format(mib=16)).stdout == "held\n"  # under the limit: fine
        with pytest.raises(MemoryLimitExceededError) as caught:
            sandbox.execute("echo before; " + ALLOCATE.format(mib=256))
        error = caught.value
        assert error.return_code == 137  # SIGKILL
        assert error.limit == 64 << 20
        assert error.stdout == "before\n"
        assert "memory limit" in str(error)
        assert error.provider == "local"
        assert error.operation == "execute"
        # the sandbox goes on; a failure that is not an OOM kill stays a plain result
        assert sandbox.execute("exit 3").return_code == 3
        assert sandbox.execute(ALLOCATE.format(mib=16)).stdout == "held\n"


@needs_cgroups
def test_a_background_command_killed_at_the_memory_limit_says_so(isolation: str) -> None:
    with Sandbox("local", config(isolation, memory_limit="64MiB")) as sandbox:
        handle = sandbox.start_process("echo started; " + ALLOCATE.format(mib=256))
        with pytest.raises(MemoryLimitExceededError) as caught:
            handle.wait(timeout=60)
        assert caught.value.return_code == 137
        assert caught.value.stdout == "started\n"
        assert caught.value.provider == "local"
        assert sandbox.start_process("exit 4").wait(timeout=30).return_code == 4  # a plain failure stays one


def test_without_a_memory_limit_big_allocations_work(isolation: str) -> None:
    with Sandbox("local", config(isolation)) as sandbox:
        assert sandbox.execute(ALLOCATE.format(mib=256)).stdout == "held\n"


BOUNDED_FORKS = """
import os, sys, time
made = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    made += 1
print(made)
"""


@needs_cgroups
def test_pids_limit_contains_a_fork_bomb(isolation: str, sandbox_dirs: list[Path]) -> None:
    with Sandbox("local", config(isolation, provider_config={"pids_limit": 40})) as sandbox:
        sandbox_dirs.extend(cgroup_dirs(sandbox.sandbox_id))
        made = int(sandbox.execute(f"python3 -c {shlex.quote(BOUNDED_FORKS)}", timeout=60).stdout)
        assert 10 < made < 40, f"{made} forks succeeded under a limit of 40 processes"
        # the classic bomb, for a few seconds: contained, and the sandbox still answers afterwards
        bomb = sandbox.execute("b() { b | b & }; b; sleep 2; echo survived", timeout=20)
        assert "survived" in bomb.stdout or bomb.return_code != 0
    with Sandbox("local", config(isolation)) as fresh:  # the host could still start processes all along
        assert fresh.execute("echo ok").stdout == "ok\n"


@needs_cgroups
def test_cpu_limit_caps_the_cpu_time(isolation: str, sandbox_dirs: list[Path]) -> None:
    spin = "python3 -c 'import time; end = time.time() + 1.5\nwhile time.time() < end: pass\nprint(time.process_time())'"
    with Sandbox("local", config(isolation, cpu_limit=0.25)) as sandbox:
        sandbox_dirs.extend(cgroup_dirs(sandbox.sandbox_id))
        used = float(sandbox.execute(spin).stdout)
        assert used < 0.6, f"{used:.2f} s of CPU in 1.5 s at a limit of 0.25 cores"
        quotas = [d / "cpu.cfs_quota_us" for d in sandbox_dirs if (d / "cpu.cfs_quota_us").exists()]
        quotas += [d / "cpu.max" for d in sandbox_dirs if (d / "cpu.max").exists()]
        assert [q.read_text().split()[0] for q in quotas] == ["25000"]


# -- without cgroups: an ordinary user ------------------------------------------------------------------

AS_NOBODY = """
import json
from grainchain import CapabilityError, SandboxConfig
from grainchain.sync import Sandbox

out = {}
try:
    Sandbox("local", SandboxConfig(cpu_limit=1.0, provider_config={"isolation": "ISOLATION"})).start()
except CapabilityError as exc:
    out["cpu"] = str(exc)
with Sandbox("local", SandboxConfig(memory_limit="64MiB", provider_config={"isolation": "ISOLATION"})) as s:
    big = s.execute("python3 -c 'b = bytearray(256 << 20)'")
    out["big"] = [big.return_code, big.stderr.strip().splitlines()[-1:]]
    out["small"] = s.execute("python3 -c 'b = bytearray(8 << 20); print(1)'").stdout
print(json.dumps(out))
"""


def test_without_cgroups_rlimits_stand_in_and_cpu_is_refused(isolation: str) -> None:
    out = run_as_nobody(AS_NOBODY.replace("ISOLATION", isolation))
    assert "limits.cpu" in out["cpu"]
    assert "not available here" in out["cpu"]
    assert out["big"] == [1, ["MemoryError"]]  # RLIMIT_AS: the allocation fails, nothing is killed
    assert out["small"] == "1\n"


@needs_cgroups
def test_the_caller_stays_in_its_own_cgroups(isolation: str) -> None:
    """Commands start in the sandbox's cgroups (pids through the spawner thread, memory and cpu through the
    launcher); no thread of the caller's moves, and the spawner thread leaves with close()."""
    own = Path(f"/proc/self/task/{threading.get_native_id()}/cgroup").read_text()
    with Sandbox("local", config(isolation, memory_limit="256MiB", cpu_limit=1.0)) as sandbox:
        sandbox.execute("true")
        sandbox.start_process("sleep 1").kill()
        groups = sandbox.execute("cat /proc/self/cgroup").stdout
        for controller in ("pids", "memory", "cpu,cpuacct" if ":cpu,cpuacct:" in own else "cpu"):
            assert any(
                f":{controller}:" in line and line.endswith(sandbox.sandbox_id)
                for line in groups.splitlines()
            ), (controller, groups)
        assert Path(f"/proc/self/task/{threading.get_native_id()}/cgroup").read_text() == own
        dirs = cgroup_dirs(sandbox.sandbox_id)
    assert all(not path.exists() for path in dirs), "the cgroups outlived close()"


@needs_cgroups
def test_every_sandbox_has_a_pids_limit_and_a_cpu_group_by_default(
    isolation: str, sandbox_dirs: list[Path]
) -> None:
    """A fork bomb must neither exhaust the host's pids (a pids cgroup, 4096) nor starve its CPU (a cpu
    cgroup without a quota: the sandbox's processes compete as one group). No memory cgroup: it costs each
    command a launcher shell, only when asked for."""
    with Sandbox("local", config(isolation)) as plain:
        dirs = cgroup_dirs(plain.sandbox_id)
        sandbox_dirs.extend(dirs)
        pids = [d for d in dirs if (d / "pids.max").exists()]
        assert len(pids) == 1
        assert pids[0].joinpath("pids.max").read_text().strip() == "4096"
        cpu = [d for d in dirs if (d / "cpu.cfs_quota_us").exists() or (d / "cpu.max").exists()]
        assert len(cpu) == 1
        quota = cpu[0] / "cpu.cfs_quota_us"
        assert (quota.read_text() if quota.exists() else (cpu[0] / "cpu.max").read_text()).split()[0] in (
            "-1",
            "max",
        )
        assert not [d for d in dirs if (d / "memory.limit_in_bytes").exists()]
        groups = plain.execute("cat /proc/self/cgroup").stdout
        assert sum(line.endswith(plain.sandbox_id) for line in groups.splitlines()) == len(dirs)


@needs_cgroups
def test_pids_limit_none_means_no_pids_limit(isolation: str) -> None:
    with Sandbox("local", config(isolation, provider_config={"pids_limit": None})) as plain:
        assert [d for d in cgroup_dirs(plain.sandbox_id) if (d / "pids.max").exists()] == []
