"""Snapshots of a busy local sandbox: while a command churns files (create, delete, rename, as fast as it
can), every snapshot succeeds and captures one moment: the sandbox's processes are stopped while its tree
is copied (copy snapshots, and layered snapshots of a busy sandbox, which copy its upper layer); a client
killed meanwhile leaves them stopped, and the next connect() continues them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import sandbox_processes

from grainchain import SandboxConfig
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.providers.local._localfs import SandboxDir
from grainchain.sync import Sandbox

MODES = ["none"] + ([] if namespaces_unavailable() else ["namespaces"])
KINDS = [("copy", {})]
if os.geteuid() == 0:  # overlayfs needs root
    KINDS += [("layers", {}), ("layers", {"disk_limit": None})]
SNAPSHOTS = 12
FILES = 50
# Each round of the churn writes f$i, deletes g$i and renames f$i to g$i: at any one moment at most one
# index is in flight (an f without its g, or neither). A copy made while it runs sees many of them.
CHURN = f"cd d; while true; do for i in $(seq {FILES}); do echo $i > f$i; rm -f g$i; mv f$i g$i; done; done"


def _one_moment(names: list[str]) -> bool:
    extra = {n[1:] for n in names if n.startswith("f")}
    missing = {str(i) for i in range(1, FILES + 1)} - {n[1:] for n in names if n.startswith("g")}
    return len(extra | missing) <= 1


@pytest.mark.parametrize(
    ("snapshots", "options"), KINDS, ids=["copy", "layers", "layers-nodisk"][: len(KINDS)]
)
@pytest.mark.parametrize("isolation", MODES)
def test_snapshots_of_a_busy_sandbox_succeed_and_capture_one_moment(
    isolation: str, snapshots: str, options: dict[str, object], state_dir: Path
) -> None:
    config = SandboxConfig(provider_config={"isolation": isolation, "snapshots": snapshots, **options})
    with Sandbox("local", config) as box:
        box.execute(f"mkdir d && cd d && for i in $(seq {FILES}); do echo $i > g$i; done")
        churn = box.start_process(CHURN)
        time.sleep(0.2)
        taken = []
        for _ in range(SNAPSHOTS):
            taken.append(box.create_snapshot())  # none may fail
            time.sleep(0.01)
        assert box.execute("echo alive").stdout == "alive\n"
        assert churn.is_running  # all along: a snapshot continues what it stopped
        left_stopped = [pid for pid in sandbox_processes(state_dir) if _state(pid) in ("T", "t")]
        assert not left_stopped, "processes left stopped (an nsenter that mirrored its child's stop?)"
        churn.kill()
        torn = []
        for snapshot_id in taken:
            box.restore_snapshot(snapshot_id)
            names = [info.name for info in box.list_files("d")]
            if not _one_moment(names):
                torn.append(sorted(names))
            for name in names:
                content = box.download_file(f"d/{name}").decode().strip()
                written = (name[1:], "") if name.startswith("f") else (name[1:],)  # f$i: maybe not yet
                assert content in written, f"{name} holds {content!r}"
        assert not torn, f"{len(torn)} of {len(taken)} snapshots mix moments, e.g. {torn[0]}"


@pytest.mark.parametrize("isolation", MODES)
def test_connect_continues_what_a_killed_client_left_stopped(isolation: str, state_dir: Path) -> None:
    """A client killed while it had the sandbox stopped for a snapshot (its `frozen` marker still there):
    the next connect() continues the sandbox's processes."""
    config = SandboxConfig(keep_alive=True, provider_config={"isolation": isolation})
    box = Sandbox("local", config)
    box.start()
    sandbox_id = box.sandbox_id
    assert sandbox_id is not None
    box.start_process("while :; do sleep 0.05; done")
    time.sleep(0.2)
    box.detach()
    pids = sandbox_processes(state_dir)
    assert pids
    (SandboxDir(state_dir.resolve(), sandbox_id).root / "frozen").write_text("4194304")  # a dead client
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    again = Sandbox.connect(sandbox_id, "local")
    try:
        assert all(_state(pid) not in ("T", "t") for pid in pids), [_state(pid) for pid in pids]
        assert not (SandboxDir(state_dir.resolve(), sandbox_id).root / "frozen").exists()
    finally:
        again.close()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return ""
