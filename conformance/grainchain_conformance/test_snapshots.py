"""Snapshots: a restore brings back exactly the tree (names, hidden ones, contents byte for byte, modes,
empty directories, symlinks), listing and deleting, unknown ids, waking up from a snapshot."""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from grainchain.adapters import Feature
from grainchain.errors import InvalidArgumentError, ProcessesRunningError, SnapshotNotFoundError
from grainchain.models import SnapshotKind
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget

# hidden entries at the top of the working directory too, where a `cp -a snapshot/* .` loses them
TREE = """printf top > .gc-top-hidden && mkdir -p .gc-top-dir && printf x > .gc-top-dir/.f \
&& mkdir -p tree/empty tree/.hidden-dir/deeper tree/sub && cd tree \
&& printf '#!/bin/sh\\necho script-ran\\n' > run.sh && chmod 755 run.sh \
&& printf secret > private && chmod 600 private \
&& printf dot > .dotfile && printf deeper > .hidden-dir/deeper/.x \
&& head -c 70000 /dev/urandom > sub/random.bin && printf 'same size A' > sub/same-size \
&& ln -s run.sh link-to-script && ln -s sub link-to-dir && ln -s nowhere dangling-link \
&& chmod 750 sub"""

CHANGES = """rm -rf .gc-top-hidden .gc-top-dir/.f && cd tree && printf 'same size B' > sub/same-size && chmod 644 run.sh && chmod 644 private \
&& rm -rf empty .dotfile && rm link-to-dir && ln -s private link-to-dir \
&& head -c 70000 /dev/urandom > sub/random.bin && printf new > .new-hidden && mkdir added-dir \
&& printf changed > .hidden-dir/deeper/.x"""


@pytest.mark.feature("snapshot.filesystem", "exec")
@pytest.mark.promises("feature:snapshot.filesystem", "op:restore_snapshot", "op:create_snapshot")
def test_restore_brings_back_exactly_the_tree(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        assert sandbox.execute(TREE).return_code == 0
        taken = inside.manifest(sandbox, ".")
        snapshot_id = sandbox.create_snapshot()
        try:
            assert sandbox.execute(CHANGES).return_code == 0
            assert inside.manifest(sandbox, ".") != taken
            sandbox.restore_snapshot(snapshot_id)
            restored = inside.manifest(sandbox, ".")
            assert restored == taken, "restored tree differs:\n" + "\n".join(
                [f"- {line}" for line in taken if line not in restored]
                + [f"+ {line}" for line in restored if line not in taken]
            )
            assert sandbox.execute("./tree/run.sh").stdout == "script-ran\n", "the script is not executable"
        finally:
            with contextlib.suppress(SnapshotNotFoundError):
                sandbox.delete_snapshot(snapshot_id)


@pytest.mark.feature("snapshot.filesystem")
@pytest.mark.promises(
    "op:list_snapshots",
    "op:delete_snapshot",
    "raises:restore_snapshot.SnapshotNotFoundError",
    "raises:delete_snapshot.SnapshotNotFoundError",
    "field:SnapshotInfo.snapshot_id",
    "field:SnapshotInfo.provider",
    "field:SnapshotInfo.kind",
    "field:SnapshotInfo.created_at",
    "field:SnapshotInfo.source_sandbox_id",
    "field:SnapshotInfo.size_bytes",
)
def test_snapshots_are_listed_until_deleted(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.execute(f"head -c 300000 /dev/urandom > payload-{os.getpid()}")
        before = datetime.now(UTC) - timedelta(seconds=5)
        snapshot_id = sandbox.create_snapshot()
        after = datetime.now(UTC) + timedelta(seconds=5)
        try:
            found = [s for s in sandbox.list_snapshots() if s.snapshot_id == snapshot_id]
            assert len(found) == 1, f"{snapshot_id} listed {len(found)} times"
            info = found[0]
            assert (info.provider, info.kind) == (conformance.name, SnapshotKind.filesystem)
            assert before <= info.created_at <= after, f"created_at {info.created_at} is not now"
            assert info.source_sandbox_id in (None, sandbox.sandbox_id)
            assert info.size_bytes is None or info.size_bytes >= 0
        finally:
            sandbox.delete_snapshot(snapshot_id)
        assert snapshot_id not in [s.snapshot_id for s in sandbox.list_snapshots()], "deleted, still listed"
        with pytest.raises(SnapshotNotFoundError):
            sandbox.restore_snapshot(snapshot_id)
        with pytest.raises(SnapshotNotFoundError):
            sandbox.delete_snapshot(snapshot_id)
        with pytest.raises(SnapshotNotFoundError):
            sandbox.restore_snapshot("gc-conformance-no-such-snapshot")
        assert sandbox.execute("echo usable").stdout == "usable\n"


def _unique_seconds() -> int:
    """A sleep's length no other run of the suite uses at the same time."""
    return 10_000_000 + secrets.randbelow(80_000_000)


def _running(sandbox: Any, needle: str) -> int:
    """How many live processes of the sandbox have `needle` as their command line (read from /proc: no ps
    needed; zombies have an empty cmdline)."""
    listing = sandbox.execute(
        "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null; echo; done"
    ).stdout
    return sum(1 for line in listing.splitlines() if line.strip() == needle)


@pytest.mark.feature("snapshot.filesystem", "exec", "process.background")
@pytest.mark.promises(
    "op:restore_snapshot",
    "param:restore_snapshot.if_processes_running",
    "raises:restore_snapshot.ProcessesRunningError",
)
def test_restore_ends_running_processes_or_refuses_and_changes_nothing(
    conformance: ConformanceTarget,
) -> None:
    # unique command lines: without isolation a sandbox's /proc is the host's, where other runs may sleep
    a, b, c = (f"sleep {_unique_seconds()}" for _ in range(3))
    with conformance.sandbox() as sandbox:
        sandbox.execute("echo at-snapshot > state")
        snapshot_id = sandbox.create_snapshot()
        try:
            # nothing runs: "refuse" restores
            sandbox.execute("echo later > state")
            sandbox.restore_snapshot(snapshot_id, if_processes_running="refuse")
            assert sandbox.execute("cat state").stdout == "at-snapshot\n"
            with pytest.raises(InvalidArgumentError, match="if_processes_running"):
                sandbox.restore_snapshot(snapshot_id, if_processes_running="wait")

            # a background handle, and what `cmd &` left running (no handle): "refuse" changes nothing
            sandbox.execute("echo later > state")
            handle = sandbox.start_process(a)
            sandbox.execute(f"{b} >/dev/null 2>&1 &")
            assert _running(sandbox, b) == 1
            with pytest.raises(ProcessesRunningError) as info:
                sandbox.restore_snapshot(snapshot_id, if_processes_running="refuse")
            listed = " ".join(info.value.processes)
            assert a in listed, info.value.processes
            assert b in listed, info.value.processes
            assert sandbox.execute("cat state").stdout == "later\n", "a refused restore changed the files"
            assert handle.is_running, "a refused restore ended a process"
            assert (_running(sandbox, a), _running(sandbox, b)) == (1, 1)

            # only the `&` one left: still refused (a process without a handle counts)
            handle.kill()
            with pytest.raises(ProcessesRunningError, match=b):
                sandbox.restore_snapshot(snapshot_id, if_processes_running="refuse")
            assert _running(sandbox, b) == 1

            # "kill" (the default): the restore ends them all; a handle's wait() reports the kill
            handle = sandbox.start_process(c)
            sandbox.restore_snapshot(snapshot_id)
            assert sandbox.execute("cat state").stdout == "at-snapshot\n"
            assert handle.wait(timeout=30).return_code == 128 + 9
            assert (_running(sandbox, b), _running(sandbox, c)) == (0, 0)
        finally:
            sandbox.delete_snapshot(snapshot_id)


@pytest.mark.feature("snapshot.memory", "exec")
@pytest.mark.promises("op:restore_snapshot", "param:restore_snapshot.if_processes_running")
def test_memory_restore_replaces_what_runs_with_the_snapshots_processes(
    conformance: ConformanceTarget,
) -> None:
    a, b = (f"sleep {_unique_seconds()}" for _ in range(2))
    with conformance.sandbox() as sandbox:
        sandbox.execute(f"{a} >/dev/null 2>&1 &")
        snapshot_id = sandbox.create_snapshot(kind=SnapshotKind.memory)
        try:
            sandbox.execute(f"{b} >/dev/null 2>&1 &")
            with pytest.raises(ProcessesRunningError, match=b):
                sandbox.restore_snapshot(snapshot_id, if_processes_running="refuse")
            assert (_running(sandbox, a), _running(sandbox, b)) == (1, 1)
            sandbox.restore_snapshot(snapshot_id)
            assert (_running(sandbox, a), _running(sandbox, b)) == (1, 0)
        finally:
            sandbox.delete_snapshot(snapshot_id)


@pytest.mark.feature("snapshot.memory", "exec")
@pytest.mark.promises("feature:snapshot.memory", "field:SnapshotInfo.kind")
def test_memory_snapshot_is_listed_as_memory(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        snapshot_id = sandbox.create_snapshot(kind=SnapshotKind.memory)
        try:
            if conformance.supports(Feature.SNAPSHOT_FILESYSTEM):
                kinds = [s.kind for s in sandbox.list_snapshots() if s.snapshot_id == snapshot_id]
                assert kinds == [SnapshotKind.memory]
        finally:
            sandbox.delete_snapshot(snapshot_id)


@pytest.mark.feature("lifecycle.terminate_wake", "snapshot.filesystem", "exec")
@pytest.mark.promises("op:wake_up", "raises:wake_up.SnapshotNotFoundError", "op:terminate")
def test_wake_up_from_a_snapshot_and_from_an_unknown_one(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.execute("echo at-snapshot > state")
        snapshot_id = sandbox.create_snapshot()
        try:
            sandbox.execute("echo after-snapshot > state; echo later > later")
            sandbox.terminate()
            with pytest.raises(SnapshotNotFoundError):
                sandbox.wake_up("gc-conformance-no-such-snapshot")
            sandbox.wake_up(snapshot_id)
            assert (
                sandbox.execute("cat state; test -e later || echo no-later").stdout
                == "at-snapshot\nno-later\n"
            )
        finally:
            sandbox.delete_snapshot(snapshot_id)
