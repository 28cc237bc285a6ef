"""Memory snapshots (CRIU) and terminate/wake_up of the local provider.

A counter started in the background counts on after a restore from where it was when the snapshot was
taken, in the same sandbox (restore, or terminate + wake_up) and in another one; where memory snapshots
cannot work, the CapabilityError says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _local import run_as_nobody

from grainchain import CapabilityError, SandboxConfig, SandboxNotRunningError, SandboxStatus, SnapshotKind
from grainchain.providers.local._criu import unavailable
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.sync import Sandbox

COUNTER = "(i=0; while :; do i=$((i+1)); echo $i > .c; mv .c counter; sleep 0.05; done) >/dev/null 2>&1 &"
REASON = namespaces_unavailable() or unavailable()
needs_criu = pytest.mark.skipif(
    REASON is not None and os.environ.get("GRAINCHAIN_REQUIRE_NAMESPACES") != "1",
    reason=f"no memory snapshots here: {REASON}",
)


def counter(sandbox: Sandbox) -> int:
    return int(sandbox.execute("cat counter").stdout)


def counter_reaches(sandbox: Sandbox, at_least: int, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while (value := counter(sandbox)) < at_least:
        assert time.monotonic() < deadline, f"the counter stays at {value}, below {at_least}"
        time.sleep(0.05)
    return value


@pytest.fixture
def counting() -> Iterator[tuple[Sandbox, str, int]]:
    """A sandbox whose background counter has been snapshotted (memory) and has counted on since."""
    with Sandbox("local", SandboxConfig(memory_limit="256MiB")) as sandbox:
        sandbox.execute(COUNTER)
        counter_reaches(sandbox, 5)
        snapshot_id = sandbox.create_snapshot(kind=SnapshotKind.memory)
        at_snapshot = counter(sandbox)
        counter_reaches(sandbox, at_snapshot + 20)  # the snapshot did not stop it
        yield sandbox, snapshot_id, at_snapshot


@needs_criu
def test_terminate_and_wake_up_bring_the_counter_back(counting: tuple[Sandbox, str, int]) -> None:
    sandbox, snapshot_id, at_snapshot = counting
    assert REASON is None
    assert sandbox.supports("snapshot.memory")
    info = next(s for s in sandbox.list_snapshots() if s.snapshot_id == snapshot_id)
    assert info.kind is SnapshotKind.memory
    sandbox.terminate()
    assert sandbox.status is SandboxStatus.terminated
    with pytest.raises(SandboxNotRunningError):
        sandbox.execute("true")
    sandbox.wake_up(snapshot_id)
    assert sandbox.status is SandboxStatus.running
    resumed = counter(sandbox)
    assert at_snapshot - 10 <= resumed < at_snapshot + 20, f"snapshot at {at_snapshot}, resumed at {resumed}"
    counter_reaches(sandbox, resumed + 5)
    # the restored processes run under the sandbox's seccomp filter again (CRIU restores it)
    filters = sandbox.execute("cat /proc/[0-9]*/status | grep '^Seccomp:' | sort -u").stdout
    assert filters.split() == ["Seccomp:", "2"], filters
    # the restored processes are the sandbox's: in its cgroup, and gone with it
    pids_dir = next(Path("/sys/fs/cgroup").glob(f"*/**/{sandbox.sandbox_id}"), None)
    if pids_dir is not None:
        assert (pids_dir / "cgroup.procs").read_text().split(), "restored processes are outside the cgroup"


@needs_criu
def test_restore_in_place_and_into_another_sandbox(counting: tuple[Sandbox, str, int]) -> None:
    sandbox, snapshot_id, at_snapshot = counting
    sandbox.restore_snapshot(snapshot_id)
    assert at_snapshot - 10 <= counter(sandbox) < at_snapshot + 20
    with Sandbox("local") as other:
        other.upload_file("counter", "1000000")
        other.restore_snapshot(snapshot_id)
        resumed = counter(other)
        assert at_snapshot - 10 <= resumed < at_snapshot + 20
        counter_reaches(other, resumed + 5)
        before = counter(sandbox)
    # closing the other sandbox stopped its counter only
    counter_reaches(sandbox, before + 5)
    sandbox.delete_snapshot(snapshot_id)


@needs_criu
def test_a_memory_snapshot_is_refused_where_processes_cannot_come_back(
    counting: tuple[Sandbox, str, int],
) -> None:
    """restore_snapshot needs either snapshot kind at the gate; the id of a memory snapshot, restored where
    memory snapshots cannot work, is refused by the adapter (CapabilityError naming snapshot.memory, with
    the reason) before anything is touched."""
    _, snapshot_id, _ = counting
    with Sandbox("local", SandboxConfig(provider_config={"isolation": "none"})) as plain:
        assert plain.supports("snapshot.filesystem")
        assert not plain.supports("snapshot.memory")
        plain.execute("echo mine > mine")
        assert snapshot_id in [s.snapshot_id for s in plain.list_snapshots()]
        with pytest.raises(CapabilityError, match="isolation 'namespaces'") as caught:
            plain.restore_snapshot(snapshot_id)
        assert (caught.value.feature, caught.value.operation) == ("snapshot.memory", "restore_snapshot")
        assert plain.execute("cat mine").stdout == "mine\n"


def test_terminate_and_wake_up_without_a_snapshot_keep_the_files() -> None:
    with Sandbox("local") as sandbox:
        sandbox.execute("echo kept > kept; sleep 300 &")
        sandbox.terminate()
        sandbox.wake_up()
        assert sandbox.execute("cat kept").stdout == "kept\n"
        assert "sleep 300" not in sandbox.execute("ps -e -o args 2>/dev/null || true").stdout


def test_without_isolation_memory_snapshots_are_refused_with_the_reason() -> None:
    with Sandbox("local", SandboxConfig(provider_config={"isolation": "none"})) as sandbox:
        with pytest.raises(CapabilityError, match="isolation 'namespaces'") as caught:
            sandbox.create_snapshot(kind=SnapshotKind.memory)
        assert caught.value.feature == "snapshot.memory"
        assert sandbox.execute("echo still usable").stdout == "still usable\n"


AS_NOBODY = """
import json
from grainchain import CapabilityError, SnapshotKind
from grainchain.sync import Sandbox

with Sandbox("local") as sandbox:
    try:
        sandbox.create_snapshot(kind=SnapshotKind.memory)
        print(json.dumps("taken"))
    except CapabilityError as exc:
        print(json.dumps(str(exc)))
"""


def test_as_an_ordinary_user_memory_snapshots_are_refused_with_the_reason() -> None:
    message = run_as_nobody(AS_NOBODY)
    assert "snapshot.memory" in message
    assert "not available here" in message
