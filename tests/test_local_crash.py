"""A client SIGKILLed in the middle of an operation loses nothing (tests/crash_harness.py): after each kill,
connect() works and the sandbox holds the old state or the new one, never a mix. Upload over an existing
file, layered snapshot (an idle sandbox's upper layer renamed into a layer), copy snapshot, restore (both
snapshot modes) and create, under both isolation modes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _reliability
import pytest
from _local import mounts_under
from conftest import sandbox_processes
from crash_harness import NEW, OLD, CrashCounts, crash_runs

from grainchain import SandboxConfig
from grainchain.providers.local import _cleanup as local_cleanup
from grainchain.providers.local import _layers as layers
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.settings import load_settings
from grainchain.sync import Sandbox

MODES = ["none"] + ([] if namespaces_unavailable() else ["namespaces"])
RUNS = int(os.environ.get("GRAINCHAIN_CRASH_RUNS", "15"))  # per operation and mode (more: thorough runs)
BIG = 32 << 20  # bytes of the uploaded file


@pytest.fixture(autouse=True)
def _no_mount_left(state_dir: Path) -> Iterator[None]:
    """A safety net: what a killed child left mounted (a probe, a half-made sandbox) goes after the test."""
    yield
    if state_dir.exists():
        for mount in reversed(mounts_under(state_dir)):
            layers.unmount(Path(mount))


def _config(isolation: str, **options: Any) -> SandboxConfig:
    return SandboxConfig(provider_config={"isolation": isolation, **options})


def _assert_no_loss(counts: CrashCounts) -> None:
    print(counts.summary())
    _reliability.record(counts.provider, faults=counts.runs, lost=counts.lost, untyped=counts.untyped)
    assert counts.landed >= counts.runs // 3, f"too few kills landed mid-operation: {counts.summary()}"
    assert counts.lost == 0, "\n".join([counts.summary(), *counts.problems])
    assert counts.untyped == 0, "\n".join([counts.summary(), *counts.problems])


@contextlib.contextmanager
def _kept(config: SandboxConfig) -> Iterator[str]:
    """A sandbox that the children connect to (this process lets go of it at once), closed at the end."""
    box = Sandbox("local", config)
    box.start()
    sandbox_id = box.sandbox_id
    assert sandbox_id is not None
    try:
        yield sandbox_id
    finally:
        Sandbox.connect(sandbox_id, "local").close()


@contextlib.contextmanager
def _attached(sandbox_id: str) -> Iterator[Sandbox]:
    """connect(), and let go of it (never closed: the sandbox stays for the next run)."""
    box = Sandbox.connect(sandbox_id, "local")
    try:
        yield box
    finally:
        box.detach()


def _text(box: Sandbox, command: str) -> str:
    result = box.execute(command, timeout=30)
    assert result.return_code == 0, result.stderr
    return result.stdout.strip()


UPLOAD = """
sb = connect()
data = bytes([CONTEXT["byte"]]) * CONTEXT["size"]
started()
sb.upload_file("big.bin", data, mode=CONTEXT["mode"])
done()
"""


@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_upload_leaves_the_old_or_the_new_file(isolation: str) -> None:
    """100 MB-style upload over an existing file (and an append to it): the file is all old or all new, and
    keeps its permissions."""
    with _kept(_config(isolation)) as sandbox_id:
        with _attached(sandbox_id) as first:
            first.upload_file("big.bin", b"a" * BIG)
            _text(first, "chmod 640 big.bin")
        current = {"byte": ord("a")}
        expected: dict[str, Any] = {"size": BIG}
        temps_left: list[str] = []

        def setup(i: int) -> dict[str, Any]:
            if expected.get("broken"):  # a mix was found: back to a known file, so runs stay independent
                with _attached(sandbox_id) as box:
                    box.upload_file("big.bin", b"a" * BIG)
                    _text(box, "chmod 640 big.bin; rm -f .grainchain-upload-*")
                current["byte"], expected["size"], expected["broken"] = ord("a"), BIG, False
            other = ord("b") if current["byte"] == ord("a") else ord("a")
            mode = "ab" if i % 4 == 3 else "wb"
            size = 1 << 20 if mode == "ab" else BIG
            old_size = expected["size"]
            expected.update(
                old=bytes([current["byte"]]),
                new=bytes([other]),
                old_size=old_size,
                new_size=old_size + size if mode == "ab" else size,
            )
            return {"sandbox_id": sandbox_id, "byte": other, "size": size, "mode": mode}

        def check(context: dict[str, Any]) -> str:
            with _attached(sandbox_id) as box:
                data = box.download_file("big.bin")
                mode = box.get_file_info("big.bin").mode
                leftovers = _text(box, "ls -A | grep -v '^big.bin$' || true").split()
                # a kill between naming the finished temporary file and renaming it over big.bin leaves
                # it (a window of two syscalls): counted as a leftover, not as data lost
                strays = [n for n in leftovers if n.startswith(".grainchain-upload-")]
                if strays:
                    temps_left.extend(strays)
                    _text(box, "rm -f .grainchain-upload-*")
            expected["broken"] = True  # until proven otherwise
            assert mode == 0o640, f"mode {mode:o}"
            others = sorted(set(leftovers) - set(strays))
            assert not others, f"left in the workspace: {others}"
            old, new = expected["old"], expected["new"]
            if len(data) == expected["old_size"] and data == old * len(data):
                expected["broken"] = False
                return OLD
            if context["mode"] == "ab":
                head = expected["old_size"]
                whole = len(data) == expected["new_size"]
                if whole and data[:head] == old * head and data[head:] == new * (len(data) - head):
                    expected["broken"] = True  # not one byte any more: the next run starts afresh
                    return NEW
            elif len(data) == expected["new_size"] and data == new * len(data):
                current["byte"] = new[0]
                expected["size"], expected["broken"] = len(data), False
                return NEW
            return f"a mix: {len(data)} bytes, starting {data[:4]!r}, ending {data[-4:]!r}"

        counts = crash_runs("local", setup, UPLOAD, check, runs=RUNS, seed=1)
        print(f"temporary files left by killed uploads: {len(temps_left)}")
        _reliability.record("local", leftovers=len(temps_left))
        _assert_no_loss(counts)


SNAPSHOT = """
sb = connect()
started()
snapshot_id = sb.create_snapshot()
done()
"""


def _snapshot_crashes(config: SandboxConfig) -> None:
    """Each run changes the workspace (a counter and a directory of files), then a child snapshots it and
    is killed: the workspace must still hold the change, and a snapshot that appeared must restore it;
    at the end every snapshot still restores what it captured (its layers were not collected)."""
    with _kept(config) as sandbox_id:
        captured: dict[str, str] = {}

        def setup(i: int) -> dict[str, Any]:
            with _attached(sandbox_id) as box:
                _text(box, f"mkdir -p d{i} && for j in $(seq 60); do echo {i} > d{i}/f$j; done; echo {i} > v")
                before = [s.snapshot_id for s in box.list_snapshots()]
            return {"sandbox_id": sandbox_id, "value": str(i), "before": before}

        def check(context: dict[str, Any]) -> str:
            with _attached(sandbox_id) as box:
                value = _text(box, "cat v")
                assert value == context["value"], f"the workspace went back to {value!r}"
                assert _text(box, f"ls d{value} | wc -l") == "60", "the last change is incomplete"
                fresh = [
                    s.snapshot_id for s in box.list_snapshots() if s.snapshot_id not in context["before"]
                ]
                outcome = OLD
                for snapshot_id in fresh:
                    box.restore_snapshot(snapshot_id)
                    assert _text(box, "cat v") == value, "the new snapshot does not hold the change"
                    captured[snapshot_id] = value
                    outcome = NEW
            return outcome

        counts = crash_runs("local", setup, SNAPSHOT, check, runs=RUNS, seed=2)
        with _attached(sandbox_id) as box:
            for snapshot_id, value in captured.items():
                box.restore_snapshot(snapshot_id)
                assert _text(box, "cat v") == value
                assert _text(box, f"ls d{value} | wc -l") == "60"
        _assert_no_loss(counts)


@pytest.mark.skipif(os.geteuid() != 0, reason="layered snapshots need root")
@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_layered_snapshot_loses_nothing(isolation: str) -> None:
    """Without a disk an idle sandbox's snapshot renames its upper layer into a layer and saves its meta:
    a kill in between must neither roll the workspace back nor let the layer be collected."""
    _snapshot_crashes(_config(isolation, snapshots="layers", disk_limit=None))


@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_copy_snapshot_loses_nothing(isolation: str) -> None:
    _snapshot_crashes(_config(isolation, snapshots="copy"))


RESTORE = """
sb = connect()
started()
sb.restore_snapshot(CONTEXT["target"])
done()
"""


@pytest.mark.parametrize("snapshots", ["layers", "copy"] if os.geteuid() == 0 else ["copy"])
@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_restore_leaves_the_old_or_the_new_workspace(isolation: str, snapshots: str) -> None:
    with _kept(_config(isolation, snapshots=snapshots)) as sandbox_id:
        trees: dict[str, str] = {}
        with _attached(sandbox_id) as box:
            for name in ("a", "b"):
                _text(
                    box, f"rm -rf a b; mkdir {name} && for j in $(seq 200); do echo {name} > {name}/f$j; done"
                )
                _text(box, f"head -c 4000000 /dev/zero > {name}/big; echo {name} > v")
                trees[name] = box.create_snapshot()
        current = {"name": "b"}

        def setup(i: int) -> dict[str, Any]:
            other = "a" if current["name"] == "b" else "b"
            return {"sandbox_id": sandbox_id, "target": trees[other], "other": other}

        def check(context: dict[str, Any]) -> str:
            with _attached(sandbox_id) as box:
                state = _text(box, "cat v; ls; find . -type f | wc -l; cat */big | wc -c")
            for name in ("a", "b"):
                if state.split() == [name, name, "v", "202", "4000000"]:
                    outcome = OLD if name == current["name"] else NEW
                    current["name"] = name
                    return outcome
            return f"a mix: {state!r}"

        _assert_no_loss(crash_runs("local", setup, RESTORE, check, runs=RUNS, seed=3))


CREATE = """
warm = Sandbox("local", SandboxConfig(provider_config=CONTEXT["options"]))  # the probes, cached per process
warm.start()
warm.close()
sb = Sandbox("local", SandboxConfig(keep_alive=True, provider_config=CONTEXT["options"]))
started()
sb.start()
done()
"""


def _leftovers(state_dir: Path) -> int:
    """`grainchain cleanup` on the state dir: what killed creates left is found as half-made sandboxes and
    removed; how many leftovers are still there afterwards."""
    settings = load_settings().model_copy(update={"state_dir": state_dir})
    for leftover in local_cleanup.leftovers(settings):
        leftover.remove()
    left = [
        *(f"{o.kind} {o.name}: {o.why}" for o in local_cleanup.leftovers(settings)),
        *(f"mount {m}" for m in mounts_under(state_dir / "local" / "sandboxes")),
        *(f"process {pid}" for pid in sandbox_processes(state_dir)),
    ]
    print("left:", left)
    return len(left)


@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_create_leaves_no_sandbox_or_a_working_one(isolation: str, state_dir: Path) -> None:
    seen: set[str] = set()
    options = {"isolation": isolation}

    def setup(i: int) -> dict[str, Any]:
        return {"options": options}

    def check(context: dict[str, Any]) -> str:
        fresh = [i.sandbox_id for i in Sandbox.list_sandboxes("local") if i.sandbox_id not in seen]
        outcome = OLD
        for sandbox_id in fresh:
            seen.add(sandbox_id)
            box = Sandbox.connect(sandbox_id, "local")
            try:
                assert _text(box, "echo ok") == "ok"
                where = _text(box, "pwd")  # isolated: /workspace; else the host path of the workspace
                assert (where == "/workspace") == (isolation == "namespaces"), f"isolation lost: {where}"
            finally:
                box.close()  # (and removed: auto_cleanup)
            outcome = NEW
        return outcome

    counts = crash_runs("local", setup, CREATE, check, runs=RUNS, seed=4)
    left = _leftovers(state_dir)
    _reliability.record("local", leftovers=left)
    _assert_no_loss(counts)
    assert left == 0, "grainchain cleanup left something of the killed creates"


KEPT_CLOSE = """
sb = connect()
started()
sb.close()
done()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="layered workspaces need root")
@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_kept_close_loses_nothing(isolation: str) -> None:
    """A close with auto_cleanup=False turns a layered workspace into a plain directory (no mount stays
    behind): a client killed midway must leave the workspace whole, layered or plain."""
    config = SandboxConfig(
        auto_cleanup=False,
        provider_config={"isolation": isolation, "snapshots": "layers", "disk_limit": None},
    )

    def setup(i: int) -> dict[str, Any]:
        box = Sandbox("local", config).start()
        _text(box, f"mkdir d && for j in $(seq 200); do echo {i} > d/f$j; done; echo {i} > v")
        box.detach()
        return {"sandbox_id": box.sandbox_id, "value": str(i)}

    def check(context: dict[str, Any]) -> str:
        sandbox_id = context["sandbox_id"]
        [info] = [i for i in Sandbox.list_sandboxes("local") if i.sandbox_id == sandbox_id]
        box = Sandbox.connect(sandbox_id, "local", SandboxConfig(auto_cleanup=True))
        try:
            assert _text(box, "cat v") == context["value"], "the workspace lost its last change"
            assert _text(box, "ls d | wc -l") == "200", "the workspace is incomplete"
        finally:
            box.close()  # (removed: this connection cleans up)
        return NEW if info.status.value == "closed" else OLD

    _assert_no_loss(crash_runs("local", setup, KEPT_CLOSE, check, runs=RUNS, seed=5))
