"""Filesystem snapshots of the local provider, for both clients: unique ids, exact restores (contents, modes,
mtimes, symlinks), chains, restores in another sandbox and in another process, listing, deletion, bad ids
and recovery from a restore a crash interrupted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _local import run_unisolated
from _support import close, connect, flavour_of, run_ok, tree_state, workspace_of

from grainchain import SandboxConfig, SnapshotKind, SnapshotNotFoundError


@pytest.fixture(autouse=True)
def _unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests look at sandboxes from the host (host paths and pids): plain host processes.
    tests/test_local_isolation.py and the conformance suite cover isolation="namespaces"."""
    run_unisolated(tmp_path, monkeypatch)


SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{32}")


async def build_tree(sandbox: Any) -> None:
    """A workspace with most kinds of entries a snapshot must keep."""
    await sandbox.upload_file("keep.txt", "keep me\n")
    await sandbox.upload_file("data/random.bin", os.urandom(256 * 1024))
    await sandbox.upload_file("data/all-bytes.bin", bytes(range(256)))
    await run_ok(
        sandbox,
        "mkdir -p bin empty private/inner && printf '#!/bin/sh\\necho run\\n' > bin/run.sh "
        "&& chmod 755 bin/run.sh && echo secret > private/inner/key && chmod 600 private/inner/key "
        "&& chmod 700 private && chmod 750 private/inner && touch .hidden "
        "&& ln -s keep.txt keep-link && ln -s data data-link && ln -s does-not-exist dangling "
        "&& mkfifo pipe && touch -d @1000000000 data/random.bin",
    )


async def test_snapshot_ids_are_unique(sandbox: Any) -> None:
    await sandbox.upload_file("f.txt", "x")

    ids = [await sandbox.create_snapshot() for _ in range(40)]

    assert len(set(ids)) == 40
    assert all(SNAPSHOT_ID.fullmatch(i) for i in ids)
    assert {s.snapshot_id for s in await sandbox.list_snapshots()} == set(ids)


async def test_restore_brings_back_exactly_the_captured_tree(sandbox: Any) -> None:
    ws = await workspace_of(sandbox)
    await build_tree(sandbox)
    captured = tree_state(ws)
    snapshot_id = await sandbox.create_snapshot()

    # change everything: delete, add, rewrite, chmod, swap kinds, re-point links
    await run_ok(
        sandbox,
        "rm keep.txt && rm -r empty && echo new > created-later.txt && mkdir -p later/dir "
        "&& printf changed > data/all-bytes.bin && chmod 644 bin/run.sh && chmod 666 private/inner/key "
        "&& rm keep-link && ln -s created-later.txt keep-link && rm data-link && mkdir data-link "
        "&& rm pipe && echo file > pipe && rm .hidden && chmod 755 private",
    )
    assert tree_state(ws) != captured

    await sandbox.restore_snapshot(snapshot_id)

    assert tree_state(ws) == captured
    assert (await run_ok(sandbox, "cat keep.txt && ./bin/run.sh && cat keep-link")).stdout == (
        "keep me\nrun\nkeep me\n"
    )
    assert not await sandbox.file_exists("created-later.txt")
    assert not await sandbox.file_exists("later")
    assert await sandbox.download_file("data/all-bytes.bin") == bytes(range(256))


async def test_snapshot_of_a_workspace_holding_a_unix_socket(sandbox: Any) -> None:
    """A socket (a server's, say) holds nothing to capture: the snapshot leaves it out instead of failing."""
    await sandbox.upload_file("data.txt", "data")
    await run_ok(sandbox, "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('server.sock')\"")
    assert await sandbox.file_exists("server.sock")

    snapshot_id = await sandbox.create_snapshot()
    await sandbox.restore_snapshot(snapshot_id)

    # (.venv: the sandbox's Python environment, made by `python3`)
    assert sorted(f.name for f in await sandbox.list_files()) == [".venv", "data.txt"]


async def test_snapshot_does_not_change_with_the_workspace(sandbox: Any) -> None:
    await sandbox.upload_file("log.txt", "before\n")
    snapshot_id = await sandbox.create_snapshot()

    await sandbox.upload_file("log.txt", "after\n", mode="a")  # same inode, changed in place
    await run_ok(sandbox, "echo overwritten > log.txt")
    await sandbox.restore_snapshot(snapshot_id)
    assert await sandbox.download_file("log.txt") == b"before\n"

    # restoring does not use the snapshot up, and later changes do not leak into it
    await run_ok(sandbox, "echo again >> log.txt")
    await sandbox.restore_snapshot(snapshot_id)
    assert await sandbox.download_file("log.txt") == b"before\n"


async def test_snapshot_chain(sandbox: Any) -> None:
    """The API document's chain: base -> dev1, back to base, -> dev2; each snapshot stays restorable."""
    await run_ok(sandbox, "mkdir -p tools && echo git > tools/git")
    base_snapshot = await sandbox.create_snapshot()

    await run_ok(sandbox, "mkdir repo1 && echo one > repo1/README")
    dev1_snapshot = await sandbox.create_snapshot()

    await sandbox.restore_snapshot(base_snapshot)
    assert not await sandbox.file_exists("repo1")
    await run_ok(sandbox, "mkdir repo2 && echo two > repo2/README")
    dev2_snapshot = await sandbox.create_snapshot()

    assert len({base_snapshot, dev1_snapshot, dev2_snapshot}) == 3
    names = lambda: sorted(f.name for f in files)  # noqa: E731

    await sandbox.restore_snapshot(dev1_snapshot)
    files = await sandbox.list_files()
    assert names() == ["repo1", "tools"]
    await sandbox.restore_snapshot(dev2_snapshot)
    files = await sandbox.list_files()
    assert names() == ["repo2", "tools"]
    assert await sandbox.download_file("repo2/README") == b"two\n"
    await sandbox.restore_snapshot(base_snapshot)
    files = await sandbox.list_files()
    assert names() == ["tools"]


async def test_snapshot_restored_in_a_new_sandbox(make_sandbox: Any) -> None:
    sandbox = await make_sandbox()
    ws = await workspace_of(sandbox)
    await build_tree(sandbox)
    captured = tree_state(ws)
    snapshot_id = await sandbox.create_snapshot()

    new_sandbox = await make_sandbox()
    await new_sandbox.upload_file("not-in-snapshot.txt", "gone after restore")
    await new_sandbox.restore_snapshot(snapshot_id)

    new_ws = await workspace_of(new_sandbox)
    assert new_ws != ws
    assert tree_state(new_ws) == captured
    assert (await run_ok(new_sandbox, "cat keep.txt")).stdout == "keep me\n"
    assert tree_state(ws) == captured  # the source sandbox is untouched


async def test_snapshot_outlives_its_sandbox_and_its_process(sandbox: Any, tmp_path: Path) -> None:
    child = """
from grainchain.sync import Sandbox

with Sandbox() as sandbox:
    sandbox.upload_file("from-child/data.bin", bytes(range(256)))
    sandbox.execute("chmod 640 from-child/data.bin && ln -s data.bin from-child/link")
    print(sandbox.create_snapshot())
"""
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ.copy(),  # the same GRAINCHAIN_STATE_DIR
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    snapshot_id = done.stdout.strip()
    assert SNAPSHOT_ID.fullmatch(snapshot_id)

    assert snapshot_id in {s.snapshot_id for s in await sandbox.list_snapshots()}
    await sandbox.restore_snapshot(snapshot_id)

    assert await sandbox.download_file("from-child/data.bin") == bytes(range(256))
    info = {f.name: f for f in await sandbox.list_files("from-child")}
    assert info["data.bin"].mode == 0o640
    assert info["link"].is_symlink
    assert (await run_ok(sandbox, "readlink from-child/link")).stdout == "data.bin\n"


async def test_list_snapshots(sandbox: Any) -> None:
    assert await sandbox.list_snapshots() == []
    before = datetime.now(UTC)
    await sandbox.upload_file("payload.bin", os.urandom(10_000))
    first = await sandbox.create_snapshot()
    await sandbox.upload_file("more.bin", os.urandom(5_000))
    second = await sandbox.create_snapshot()
    after = datetime.now(UTC)

    snapshots = await sandbox.list_snapshots()

    assert [s.snapshot_id for s in snapshots] == [first, second]  # oldest first
    for info in snapshots:
        assert info.provider == "local"
        assert info.kind is SnapshotKind.filesystem
        assert info.source_sandbox_id == sandbox.sandbox_id
        assert before - timedelta(seconds=1) <= info.created_at <= after + timedelta(seconds=1)
    assert snapshots[0].size_bytes is not None
    assert snapshots[1].size_bytes is not None
    assert 10_000 <= snapshots[0].size_bytes < 15_000
    assert 15_000 <= snapshots[1].size_bytes < 20_000


async def test_snapshots_are_shared_by_the_sandboxes_of_the_provider(make_sandbox: Any) -> None:
    one, two = await make_sandbox(), await make_sandbox()
    snapshot_id = await one.create_snapshot()
    assert [s.snapshot_id for s in await two.list_snapshots()] == [snapshot_id]


async def test_delete_snapshot(sandbox: Any, state_dir: Path) -> None:
    await sandbox.upload_file("f.txt", "x")
    doomed = await sandbox.create_snapshot()
    kept = await sandbox.create_snapshot()
    snapshots_dir = state_dir / "local" / "snapshots"
    assert (snapshots_dir / doomed).is_dir()

    await sandbox.delete_snapshot(doomed)

    assert [s.snapshot_id for s in await sandbox.list_snapshots()] == [kept]
    assert sorted(os.listdir(snapshots_dir)) == [kept]  # its files are gone from disk, nothing left over
    with pytest.raises(SnapshotNotFoundError) as caught:
        await sandbox.restore_snapshot(doomed)
    assert caught.value.snapshot_id == doomed
    assert caught.value.operation == "restore_snapshot"
    assert caught.value.provider == "local"
    with pytest.raises(SnapshotNotFoundError):
        await sandbox.delete_snapshot(doomed)
    await sandbox.restore_snapshot(kept)
    assert await sandbox.download_file("f.txt") == b"x"


BAD_IDS = [
    "../../etc",
    "..",
    ".",
    "/etc",
    "snap-../../x",
    "snap-" + "0" * 32,  # well-formed but unknown
    "snap-" + "0" * 32 + "\n",
    "SNAP-" + "0" * 32,
    "snap-" + "0" * 32 + "/../" + "snap-" + "0" * 32,
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_bad_snapshot_ids_touch_nothing(sandbox: Any, bad_id: str, state_dir: Path) -> None:
    ws = await workspace_of(sandbox)
    await build_tree(sandbox)
    good = await sandbox.create_snapshot()
    await sandbox.upload_file("after-snapshot.txt", "must stay")
    workspace_before = tree_state(ws)
    snapshots_before = tree_state(state_dir / "local" / "snapshots")
    background = await sandbox.start_process("sleep 30")
    try:
        with pytest.raises(SnapshotNotFoundError):
            await sandbox.restore_snapshot(bad_id)
        with pytest.raises(SnapshotNotFoundError):
            await sandbox.delete_snapshot(bad_id)
        with pytest.raises(SnapshotNotFoundError):
            await sandbox.delete_snapshot(f"../sandboxes/{sandbox.sandbox_id}")

        assert background.is_running  # a failed restore stops nothing
    finally:
        await background.kill()
    assert tree_state(ws) == workspace_before
    assert tree_state(state_dir / "local" / "snapshots") == snapshots_before
    assert [s.snapshot_id for s in await sandbox.list_snapshots()] == [good]


async def test_restore_stops_the_sandboxs_processes(sandbox: Any) -> None:
    snapshot_id = await sandbox.create_snapshot()
    background = await sandbox.start_process("sleep 30")
    await run_ok(sandbox, "nohup sleep 30 >/dev/null 2>&1 &")

    await sandbox.restore_snapshot(snapshot_id)

    assert not background.is_running
    assert (await run_ok(sandbox, "echo still usable")).stdout == "still usable\n"


async def test_restore_keeps_the_working_directory_usable(make_sandbox: Any) -> None:
    plain = await make_sandbox()
    await plain.upload_file("top.txt", "top")
    without_sub = await plain.create_snapshot()

    sandbox = await make_sandbox(SandboxConfig(working_directory="sub"))
    await sandbox.upload_file("in-sub.txt", "x")
    await sandbox.restore_snapshot(without_sub)

    assert (await run_ok(sandbox, "pwd")).stdout.strip().endswith("/sub")
    assert await sandbox.list_files() == []
    assert await sandbox.download_file("../top.txt") == b"top"
    await sandbox.upload_file("again.txt", "y")
    assert (await run_ok(sandbox, "cat again.txt")).stdout == "y"


async def test_snapshot_captures_the_whole_workspace_not_the_working_directory(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(working_directory="sub"))
    await sandbox.upload_file("in-sub.txt", "sub")
    await sandbox.upload_file("../at-root.txt", "root")
    snapshot_id = await sandbox.create_snapshot()

    other = await make_sandbox()
    await other.restore_snapshot(snapshot_id)
    assert sorted(f.name for f in await other.list_files()) == ["at-root.txt", "sub"]
    assert await other.download_file("sub/in-sub.txt") == b"sub"


async def test_half_written_snapshots_are_ignored(sandbox: Any, state_dir: Path) -> None:
    """What a crash during create_snapshot or delete_snapshot leaves is neither listed nor restorable."""
    real = await sandbox.create_snapshot()
    snapshots_dir = state_dir / "local" / "snapshots"
    staging_id = f"snap-{uuid.uuid4().hex}"
    (snapshots_dir / f".staging-{staging_id}" / "tree").mkdir(parents=True)
    no_meta_id = f"snap-{uuid.uuid4().hex}"
    (snapshots_dir / no_meta_id / "tree").mkdir(parents=True)
    (snapshots_dir / f".deleting-{real}-x" / "tree").mkdir(parents=True)

    assert [s.snapshot_id for s in await sandbox.list_snapshots()] == [real]
    for snapshot_id in (staging_id, f".staging-{staging_id}", no_meta_id):
        with pytest.raises(SnapshotNotFoundError):
            await sandbox.restore_snapshot(snapshot_id)


# -- a restore interrupted by a crash ----------------------------------------------------------------------
#
# With provider_config snapshots="copy", restore_snapshot copies the snapshot beside the workspace (.restore-*), renames the complete copy .ready-*,
# then swaps it in with two renames (workspace -> .old-*, .ready-* -> workspace). These tests lay out on disk
# what a process killed at each step leaves behind, and check that reconnecting repairs it.


async def _detached_sandbox_with_snapshot(make_sandbox: Any) -> tuple[str, Path, dict[str, Any], Path]:
    copies = {"isolation": "none", "snapshots": "copy"}  # the restore these tests interrupt copies trees
    sandbox = await make_sandbox(SandboxConfig(keep_alive=True, provider_config=copies))
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("version.txt", "snapshot")
    snapshot_id = await sandbox.create_snapshot()
    state = Path(os.environ["GRAINCHAIN_STATE_DIR"]).resolve()
    snapshot_tree = state / "local" / "snapshots" / snapshot_id / "tree"
    assert snapshot_tree.is_dir()
    await sandbox.upload_file("version.txt", "current")
    await sandbox.upload_file("only-current.txt", "x")
    current = tree_state(ws)
    sandbox_id = sandbox.sandbox_id
    await sandbox.detach()  # the owner goes away (as a crashed process would), the sandbox stays
    return sandbox_id, ws, current, snapshot_tree


@pytest.mark.parametrize(
    ("crashed_after", "expected"),
    [
        ("copy started", "current"),  # .restore-* half-copied: the workspace is untouched
        ("copy complete", "current"),  # .ready-* complete, swap not begun
        ("workspace moved away", "snapshot"),  # .old-* and .ready-*, no workspace: finish the restore
        ("ready copy lost", "current"),  # only .old-*, no workspace: undo
        ("swap done", "snapshot"),  # new workspace, .old-* not yet deleted
    ],
)
async def test_interrupted_restore_is_repaired_on_connect(
    make_sandbox: Any, crashed_after: str, expected: str
) -> None:
    flavour = flavour_of(await make_sandbox())
    sandbox_id, ws, current, snapshot_tree = await _detached_sandbox_with_snapshot(make_sandbox)
    root = ws.parent
    snapshot_state = tree_state(snapshot_tree)

    if crashed_after == "copy started":
        (root / ".restore-t" / "partial").mkdir(parents=True)
    elif crashed_after == "copy complete":
        shutil.copytree(snapshot_tree, root / ".ready-t", symlinks=True)
    elif crashed_after == "workspace moved away":
        ws.rename(root / ".old-t")
        shutil.copytree(snapshot_tree, root / ".ready-t", symlinks=True)
    elif crashed_after == "ready copy lost":
        ws.rename(root / ".old-t")
    else:
        ws.rename(root / ".old-t")
        shutil.copytree(snapshot_tree, ws, symlinks=True)

    sandbox = await connect(flavour, sandbox_id)
    try:
        assert tree_state(ws) == (snapshot_state if expected == "snapshot" else current)
        left = [name for name in os.listdir(root) if name.startswith((".restore-", ".ready-", ".old-"))]
        assert left == []
        assert {"tmp", "workspace"} <= set(os.listdir(root))
        assert (await run_ok(sandbox, "cat version.txt")).stdout == expected
    finally:
        await close(sandbox)
    assert not ws.exists()
