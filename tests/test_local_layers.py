"""Layered (overlayfs) snapshots of the local provider: what makes them fast, and that they stay exact.

tests/test_local_snapshots.py checks the snapshot semantics with the default mode (layers, as root); these
tests check what is particular to layers: a snapshot moves the changes instead of copying them, chains
stack layers (and deep ones are flattened), deletion frees what nothing else uses, a busy sandbox is
snapshotted by copying only its changes, copy and layered snapshots restore into each other's sandboxes,
and no mount outlives its sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _local import mounts_under
from _support import tree_state

from grainchain import SandboxConfig
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.providers.local._layers import MAX_DEPTH, overlay_unavailable
from grainchain.providers.local._localfs import SandboxDir
from grainchain.sync import Sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs snapshots need root")
MODES = ["none"] + ([] if namespaces_unavailable() else ["namespaces"])


@pytest.fixture(autouse=True)
def _overlay_works(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    reason = overlay_unavailable(state_dir.resolve())
    if reason:
        pytest.fail(f"running as root, but {reason}")


@pytest.fixture(params=MODES)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    config = SandboxConfig(provider_config={"isolation": request.param, "snapshots": "layers"})
    with Sandbox("local", config) as box:
        yield box


def host_workspace(state_dir: Path, sandbox: Sandbox) -> Path:
    return SandboxDir(state_dir.resolve(), sandbox.sandbox_id).workspace


def layers_of(state_dir: Path) -> set[str]:
    base = state_dir / "local" / "layers"
    return {p.name for p in base.iterdir() if not p.name.startswith(".")} - {"base"}


@pytest.mark.parametrize("isolation", MODES)
def test_without_a_disk_a_snapshot_moves_the_changes_instead_of_copying_them(
    isolation: str, state_dir: Path
) -> None:
    """Without a disk quota (disk_limit None) the upper layer is on the layers' filesystem: an idle
    sandbox's snapshot renames it into a layer (with a disk it is copied: see the next test)."""
    config = {"isolation": isolation, "snapshots": "layers", "disk_limit": None}
    with Sandbox("local", SandboxConfig(provider_config=config)) as sandbox:
        _moves_not_copies(sandbox, state_dir)


def test_with_a_disk_a_snapshot_copies_the_changes(sandbox: Sandbox, state_dir: Path) -> None:
    sandbox.execute("mkdir d && for i in $(seq 20); do head -c 4096 /dev/urandom > d/f$i; done")
    before = tree_state(host_workspace(state_dir, sandbox))
    daemon = sandbox.start_process("sleep 60")
    sandbox.create_snapshot()
    assert daemon.is_running  # no remount: nothing of the sandbox was stopped for it
    daemon.kill()
    (layer,) = layers_of(state_dir)
    copied = state_dir / "local" / "layers" / layer / "d" / "f7"
    assert copied.stat().st_dev != (host_workspace(state_dir, sandbox) / "d" / "f7").stat().st_dev
    assert copied.read_bytes() == (host_workspace(state_dir, sandbox) / "d" / "f7").read_bytes()
    assert tree_state(host_workspace(state_dir, sandbox)) == before


def _moves_not_copies(sandbox: Sandbox, state_dir: Path) -> None:
    sandbox.execute("mkdir d && for i in $(seq 200); do head -c 4096 /dev/urandom > d/f$i; done")
    inode = (host_workspace(state_dir, sandbox) / "d" / "f7").stat().st_ino
    before = tree_state(host_workspace(state_dir, sandbox))
    sandbox.create_snapshot()
    (layer,) = layers_of(state_dir)
    assert (state_dir / "local" / "layers" / layer / "d" / "f7").stat().st_ino == inode  # renamed, not copied
    assert tree_state(host_workspace(state_dir, sandbox)) == before  # and the workspace looks the same
    assert sandbox.execute("cat d/f7 | wc -c").stdout.strip() == "4096"
    sandbox.create_snapshot()  # nothing changed since: the same layers, no empty one
    assert len(layers_of(state_dir)) == 1


def test_deletions_renames_and_chains_restore_exactly(sandbox: Sandbox, state_dir: Path) -> None:
    ws = host_workspace(state_dir, sandbox)
    sandbox.execute(
        "mkdir -p a/b && echo 1 > a/b/one && echo keep > keep && ln -s a/b link && chmod 640 keep"
    )
    first = sandbox.create_snapshot()
    first_state = tree_state(ws)
    # a deletion, a directory rename and an overwrite on top of a lower layer
    sandbox.execute("rm keep && mv a/b a/c && echo 2 > a/c/one && mkdir a/b && touch a/b/new")
    second = sandbox.create_snapshot()
    second_state = tree_state(ws)
    sandbox.restore_snapshot(first)
    assert tree_state(ws) == first_state
    sandbox.execute("echo 3 > three")  # a chain: a snapshot of a restored snapshot
    third = sandbox.create_snapshot()
    third_state = tree_state(ws)
    for snapshot_id, expected in ((second, second_state), (third, third_state), (first, first_state)):
        sandbox.restore_snapshot(snapshot_id)
        assert tree_state(ws) == expected
    assert sandbox.execute("cat a/b/one").stdout == "1\n"


def test_deep_chains_are_flattened(state_dir: Path) -> None:
    config = SandboxConfig(provider_config={"isolation": "none", "snapshots": "layers"})
    with Sandbox("local", config) as sandbox:
        ids = []
        for i in range(MAX_DEPTH + 3):
            sandbox.execute(f"echo {i} > f{i} && rm -f f{i - 2}")
            ids.append(sandbox.create_snapshot())
        listing = sorted(f.name for f in sandbox.list_files("."))
        assert listing == [f"f{MAX_DEPTH + 1}", f"f{MAX_DEPTH + 2}"]
        sandbox.restore_snapshot(ids[0])
        assert sorted(f.name for f in sandbox.list_files(".")) == ["f0"]
        sandbox.restore_snapshot(ids[-1])
        assert sorted(f.name for f in sandbox.list_files(".")) == listing


def test_deleting_snapshots_frees_what_nothing_else_uses(sandbox: Sandbox, state_dir: Path) -> None:
    sandbox.execute("head -c 2000000 /dev/urandom > big")
    first = sandbox.create_snapshot()
    sandbox.execute("head -c 1000000 /dev/urandom > more")
    second = sandbox.create_snapshot()  # its layers: the one with `more`, then the one with `big`
    assert len(layers_of(state_dir)) == 2
    sandbox.restore_snapshot(first)  # the sandbox now stands on `big`'s layer only
    sandbox.delete_snapshot(second)
    assert len(layers_of(state_dir)) == 1  # `more` is gone; `big` is still used by the sandbox
    sandbox.delete_snapshot(first)
    assert len(layers_of(state_dir)) == 1  # ... and by the running sandbox
    sandbox.restore_snapshot(sandbox.create_snapshot())
    assert sandbox.execute("wc -c < big").stdout.strip() == "2000000"


def test_layers_go_when_the_last_user_closes(state_dir: Path) -> None:
    config = SandboxConfig(provider_config={"isolation": "none"})
    with Sandbox("local", config) as sandbox:
        sandbox.execute("echo x > x")
        snapshot_id = sandbox.create_snapshot()
    assert len(layers_of(state_dir)) == 1  # the snapshot keeps it
    with Sandbox("local", config) as other:
        other.delete_snapshot(snapshot_id)
    assert layers_of(state_dir) == set()
    assert mounts_under(state_dir) == []


def test_a_busy_sandbox_copies_its_changes_and_keeps_running(sandbox: Sandbox, state_dir: Path) -> None:
    sandbox.execute("echo base > base")
    sandbox.create_snapshot()
    handle = sandbox.start_process("i=0; while true; do i=$((i+1)); echo $i > counter; sleep 0.05; done")
    sandbox.execute("echo changed > changed")
    snapshot_id = sandbox.create_snapshot()
    assert handle.is_running, "a snapshot must not stop the sandbox's processes"
    before = int(sandbox.execute("cat counter").stdout)
    assert sandbox.execute("sleep 0.3; cat counter").stdout.strip() != str(before)
    sandbox.restore_snapshot(snapshot_id)
    assert not handle.is_running  # a restore does stop them
    assert sandbox.download_file("changed") == b"changed\n"
    assert sandbox.download_file("base") == b"base\n"


def test_copy_and_layered_snapshots_restore_into_each_other(state_dir: Path) -> None:
    copies = SandboxConfig(provider_config={"isolation": "none", "snapshots": "copy"})
    layered = SandboxConfig(provider_config={"isolation": "none", "snapshots": "layers"})
    with Sandbox("local", copies) as plain, Sandbox("local", layered) as stacked:
        plain.execute("mkdir d && echo from-copy > d/f")
        stacked.execute("echo from-layers > g && echo gone > h")
        stacked.create_snapshot()
        stacked.execute("rm h")  # a whiteout in the top layer
        from_layers = stacked.create_snapshot()
        from_copy = plain.create_snapshot()
        stacked.restore_snapshot(from_copy)
        assert sorted(f.name for f in stacked.list_files(".")) == ["d"]
        plain.restore_snapshot(from_layers)
        assert sorted(f.name for f in plain.list_files(".")) == ["g"]
        assert plain.download_file("g") == b"from-layers\n"


def test_a_kept_sandbox_leaves_a_plain_directory(state_dir: Path) -> None:
    config = SandboxConfig(auto_cleanup=False, provider_config={"isolation": "namespaces"})
    if namespaces_unavailable():
        config = SandboxConfig(auto_cleanup=False, provider_config={"isolation": "none"})
    sandbox = Sandbox("local", config).start()
    sandbox.execute("echo v1 > f")
    sandbox.create_snapshot()
    sandbox.execute("echo v2 > f")
    ws = host_workspace(state_dir, sandbox)
    sandbox.close()
    assert mounts_under(state_dir) == []  # neither its overlay nor its disk (quota) stays mounted
    again = Sandbox.connect(sandbox.sandbox_id, "local")
    try:
        assert (ws / "f").read_text() == "v2\n"  # a plain directory (on its disk, mounted again)
        assert again.execute("cat f").stdout == "v2\n"
    finally:
        again.close()
