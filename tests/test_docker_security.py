"""Security properties of the docker provider, against a real engine (as tests/test_docker.py, whose engine
check, config() and leftover-container check this module shares):

* a label of an image (which anyone can build, and which `docker commit` passes on) never picks a host
  directory that grainchain deletes or copies into a container;
* provider_config disk_limit is a quota the engine enforces, or a clear ConfigurationError;
* a default sandbox has a pids limit, and kill() ends a fork bomb quickly, also one at the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_docker import (  # the engine check runs on import: skipped (or failed in CI) without an engine
    IMAGE,
    _engine_client,
    _engine_info,
    _our_containers,
    _volume_names,
    config,
    no_container_left,  # noqa: F401  (module fixture: no container of this run is left)
)

from grainchain import AsyncSandbox
from grainchain.errors import ConfigurationError, SnapshotNotFoundError
from grainchain.models import SnapshotKind
from grainchain.providers.docker import _engine as dk
from grainchain.providers.docker._async.adapter import _memory_snapshot_problem

PYTHON_IMAGE = "grainchain-test/python:3.11"
REQUIRE_DOCKER = os.environ.get("GRAINCHAIN_REQUIRE_DOCKER") == "1"


# -- helpers --------------------------------------------------------------------------------------------


def _build_image(dockerfile: str, tag: str | None = None) -> str:
    """Build an image with the engine (a context holding only the Dockerfile); its reference."""
    tag = tag or f"grainchain-test/forged:{uuid.uuid4().hex[:12]}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with _engine_client(timeout=120) as client:
        response = client.post(
            "/build",
            params={"t": tag, "rm": "1", "forcerm": "1"},
            content=buffer.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
    assert response.status_code == 200, response.text
    errors = [json.loads(line).get("error") for line in response.text.splitlines() if line.strip()]
    assert not any(errors), errors
    return tag


def _remove_image(image: str) -> None:
    with _engine_client() as client:
        client.delete(f"/images/{image}", params={"force": "1"})


def _image_labels(image: str) -> dict[str, str]:
    with _engine_client() as client:
        labels: dict[str, str] = client.get(f"/images/{image}/json").json()["Config"]["Labels"] or {}
    return labels


def _container(sandbox_id: str) -> dict[str, Any]:
    """The engine's inspection of a sandbox's container."""
    filters = json.dumps({"label": [f"{dk.LABEL_SANDBOX}={sandbox_id}"]})
    with _engine_client() as client:
        found = client.get("/containers/json", params={"all": "1", "filters": filters}).json()
        assert len(found) == 1, found
        inspected: dict[str, Any] = client.get(f"/containers/{found[0]['Id']}/json").json()
    return inspected


OLD = 1_000_000_000.0  # an atime in 2001: reading the file (or listing the directory) moves it (relatime)


def _victim(tmp_path: Path) -> Path:
    """A host directory holding a file, with old access times: a read or a listing shows in its atime."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    control = tmp_path / "control"
    control.write_text("read me")
    for path in (victim / "precious", victim, control):
        os.utime(path, (OLD, path.stat().st_mtime))
    control.read_text()
    assert control.stat().st_atime != OLD, "this filesystem does not record reads (noatime): cannot check"
    return victim


def _assert_untouched(victim: Path) -> None:
    assert (victim / "precious").read_text() == "keep me", "the victim directory was deleted"
    # read_text() above moved the file's atime only now; the directory was not listed since _victim()
    assert victim.stat().st_atime == OLD, "grainchain listed (copied) the victim directory"


# -- labels never pick host paths -------------------------------------------------------------------------


async def test_an_image_label_cannot_pick_what_delete_snapshot_deletes(
    make_sandbox: Any, tmp_path: Path
) -> None:
    victim = _victim(tmp_path)
    image = _build_image(f"FROM {IMAGE}\nLABEL {dk.LABEL_CHECKPOINT}={victim} {dk.LABEL_KIND}=memory\n")
    try:
        sandbox = await make_sandbox(config(image=image), provider="docker")
        snapshot = await sandbox.create_snapshot()
        labels = _image_labels(snapshot)
        await sandbox.restore_snapshot(snapshot)
        await sandbox.delete_snapshot(snapshot)
        _assert_untouched(victim)
        # written on every commit, so the image's labels are not inherited
        assert (labels[dk.LABEL_CHECKPOINT], labels[dk.LABEL_KIND]) == ("", "filesystem")
    finally:
        _remove_image(image)


async def test_a_forged_memory_snapshot_reads_and_deletes_nothing_outside_the_store(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A snapshot image whose labels point outside grainchain's checkpoint store: what a snapshot made before
    labels were written on every commit could carry, or an image tagged into grainchain's repository."""
    victim = _victim(tmp_path)
    labels = {
        dk.LABEL: "1",
        dk.LABEL_SNAPSHOT: "1",
        dk.LABEL_KIND: "memory",
        dk.LABEL_CHECKPOINT: str(victim),
    }
    dockerfile = f"FROM {IMAGE}\nLABEL " + " ".join(f"{k}={v}" for k, v in labels.items()) + "\n"
    snapshot = _build_image(dockerfile, tag=f"{dk.SNAPSHOT_REPO}:{uuid.uuid4().hex[:20]}")
    try:
        sandbox = await make_sandbox(config(), provider="docker")
        with pytest.raises(SnapshotNotFoundError, match="not in this grainchain's checkpoint directory"):
            await sandbox.restore_snapshot(snapshot)
        await sandbox.terminate()
        with pytest.raises(SnapshotNotFoundError, match="not in this grainchain's checkpoint directory"):
            await sandbox.wake_up(snapshot)
        await sandbox.wake_up()
        assert (await sandbox.execute("echo up")).stdout == "up\n"
        await sandbox.delete_snapshot(snapshot)
        _assert_untouched(victim)
    finally:
        _remove_image(snapshot)


def test_only_entries_of_the_checkpoint_store_are_trusted(tmp_path: Path) -> None:
    store = tmp_path / "state" / "docker" / "checkpoints"
    (store / "abc" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "link").symlink_to(outside)
    assert dk.owned_checkpoint(str(store), str(store / "abc")) == str((store / "abc").resolve())
    for labelled in [
        str(outside),
        str(store),  # the store itself
        str(store / "abc" / "sub"),  # inside another checkpoint
        str(store / ".." / "checkpoints-x"),
        str(store / ".." / ".." / ".." / "outside"),
        str(store / "link"),  # a symlink in the store to somewhere else
        "",
        None,
    ]:
        assert dk.owned_checkpoint(str(store), labelled) is None, labelled


async def test_a_snapshot_of_a_memory_snapshots_image_keeps_the_checkpoint(state_dir: Path) -> None:
    """A sandbox started from a memory snapshot's image, then snapshotted (filesystem): deleting that
    snapshot used to delete the memory snapshot's checkpoint (the commit inherited its label)."""
    problem = _memory_snapshot_problem(dk.engine_endpoint(), _engine_info())
    if problem is not None:
        pytest.skip(f"no memory snapshots here: {problem}")
    async with AsyncSandbox("docker", config()) as source:
        memory = await source.create_snapshot(kind=SnapshotKind.memory)
        try:
            saved = _image_labels(memory)[dk.LABEL_CHECKPOINT]
            assert Path(saved).parent == state_dir / "docker" / "checkpoints"
            async with AsyncSandbox("docker", config(image=memory)) as child:
                files = await child.create_snapshot()
                assert _image_labels(files)[dk.LABEL_CHECKPOINT] == ""
                await child.delete_snapshot(files)
            assert Path(saved, "inventory.img").exists(), "deleting another snapshot took this checkpoint"
            await source.restore_snapshot(memory)
        finally:
            await source.delete_snapshot(memory)
    assert not Path(saved).exists()


# -- disk_limit -----------------------------------------------------------------------------------------

# What dockerd 20.10.24 (overlay2 on ext4, this kind of machine before .ci/docker-up moved its data root to
# XFS) answered POST /containers/create with HostConfig.StorageOpt {"size": ...}: HTTP 500 and this.
ENGINE_REFUSAL = "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
EXT4_INFO = {
    "Driver": "overlay2",
    "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
    "DockerRootDir": "/var/lib/docker",
}


def _assert_clear_refusal(error: ConfigurationError, value: str) -> None:
    text = str(error)
    assert error.provider == "docker"
    for part in ("disk_limit", repr(value), "storage driver", "backing filesystem"):
        assert part in text, (part, text)
    # what to do
    assert "on XFS mounted with the 'pquota' option" in text
    assert "leave disk_limit unset" in text


async def test_disk_limit_bad_values_name_the_key_the_value_and_the_forms() -> None:
    for bad in ["lots", "64XB", "-1MiB", 0, -5, 1.5, True, [64]]:
        with pytest.raises(ConfigurationError) as info:
            await AsyncSandbox("docker", config(provider_config={"disk_limit": bad})).start()
        text = str(info.value)
        for part in ("disk_limit", repr(bad), "MiB", "KB"):
            assert part in text, (part, text)
        assert info.value.provider == "docker"


def test_disk_limit_refusal_says_why_and_what_to_do() -> None:
    assert dk.storage_opt_refused(f"create container: docker engine answered 500: {ENGINE_REFUSAL}")
    assert not dk.storage_opt_refused("create container: docker engine answered 404: No such image: x:1")
    error = dk.disk_limit_error("64MiB", ENGINE_REFUSAL, EXT4_INFO)
    _assert_clear_refusal(error, "64MiB")
    for part in ("overlay2", "extfs", ENGINE_REFUSAL):
        assert part in str(error)


def _engine_has_quotas() -> bool:
    """Whether the engine's data root is an XFS mounted with project quotas (what overlay2 needs for
    StorageOpt.size); .ci/docker-up sets that up where the kernel has XFS quotas."""
    root = subprocess.run(
        ["docker", "info", "-f", "{{.DockerRootDir}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    best = ("", "", set[str]())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            point = left.split()[4]
            fstype, _, options = right.split()[:3]
            if (root == point or root.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
                best = (point, fstype, set(options.split(",")))
    return best[1] == "xfs" and bool(best[2] & {"prjquota", "pquota"})


async def test_disk_limit_caps_the_containers_writable_layer(make_sandbox: Any) -> None:
    volume = f"gc-test-{uuid.uuid4().hex[:8]}"  # made for the sandbox, so removed with it (or its failure)
    cfg = config(provider_config={"disk_limit": "64MiB", "volumes": [f"{volume}:/data"]})
    if not _engine_has_quotas():  # judged from the engine's data root, not from grainchain
        with pytest.raises(ConfigurationError) as refused:
            await make_sandbox(cfg, provider="docker")
        _assert_clear_refusal(refused.value, "64MiB")  # never a silently ignored limit
        assert not _our_containers()
        assert volume not in _volume_names()
        return
    sandbox = await make_sandbox(cfg, provider="docker")
    limit = 64 << 20
    host = _container(sandbox.sandbox_id)["HostConfig"]
    assert host["StorageOpt"] == {"size": str(limit)}
    result = await sandbox.execute("head -c 200000000 /dev/zero > /big; echo exit=$?; stat -c %s /big")
    assert re.search(r"No space left on device|Disk quota exceeded", result.stderr), result
    exit_line, size_line = result.stdout.split()
    assert exit_line != "exit=0"
    assert 16 << 20 < int(size_line) <= limit, f"{int(size_line) >> 20} MiB written under a 64 MiB quota"
    # the space comes back, and a restored sandbox (a new container) keeps the limit
    assert (await sandbox.execute("rm /big && head -c 10000000 /dev/zero > /small")).return_code == 0
    snapshot = await sandbox.create_snapshot()
    try:
        await sandbox.restore_snapshot(snapshot)
        assert _container(sandbox.sandbox_id)["HostConfig"]["StorageOpt"] == {"size": str(limit)}
        again = await sandbox.execute("head -c 200000000 /dev/zero > /tmp/big")
        assert again.return_code != 0
    finally:
        await sandbox.delete_snapshot(snapshot)


# -- pids limit and fork bombs --------------------------------------------------------------------------


def _cgroup(container_id: str) -> str | None:
    """The host directory of the container's pids cgroup (None once the container is gone)."""
    for path in [
        f"/sys/fs/cgroup/pids/docker/{container_id}",  # cgroup v1, cgroupfs driver (this kind of machine)
        f"/sys/fs/cgroup/docker/{container_id}",  # v2, cgroupfs
        f"/sys/fs/cgroup/pids/system.slice/docker-{container_id}.scope",  # v1, systemd
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope",  # v2, systemd
    ]:
        if os.path.exists(f"{path}/cgroup.procs"):
            return path
    return None


def _processes_with(token: str, container_id: str) -> list[int]:
    """Host pids of the container's live processes whose environment holds `token` (the engine is on this
    machine). Only the container's cgroup is read: reading /proc/<pid>/environ can block while that process
    forks, and other work on this machine may fork a lot."""
    cgroup = _cgroup(container_id)
    if cgroup is None:
        return []  # the container and its cgroup are gone, and with them its processes
    with open(f"{cgroup}/cgroup.procs") as f:
        pids = [int(line) for line in f if line.strip()]
    marked = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if token.encode() in f.read().split(b"\0"):
                    marked.append(pid)
        except OSError:
            continue
    return marked


def _kill_from_the_host(token: str, container_id: str) -> None:
    for pid in _processes_with(token, container_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_default_sandbox_has_a_pids_limit(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    assert _container(sandbox.sandbox_id)["HostConfig"]["PidsLimit"] == dk.DEFAULT_PIDS_LIMIT == 4096
    assert await _pids(sandbox, "max") == 4096  # what the kernel enforces in the container


async def _pids(sandbox: AsyncSandbox, which: str = "current") -> int:
    # one simple command: the shell then execs cat instead of forking it (at the pids limit it cannot fork)
    for path in (f"/sys/fs/cgroup/pids/pids.{which}", f"/sys/fs/cgroup/pids.{which}"):  # cgroup v1, v2
        result = await sandbox.execute(f"cat {path}")
        if result.return_code == 0:
            return int(result.stdout)
    raise AssertionError(f"no pids.{which} in the container")


async def _wait_until_grown(container_id: str, at_least: int, deadline_s: float = 60) -> int:
    """Wait until the container holds at least `at_least` processes and stops growing; their number. Read
    on the host: at the pids limit an exec into the container may fail to start."""
    deadline, last = time.monotonic() + deadline_s, -1
    while time.monotonic() < deadline:
        with open(f"{_cgroup(container_id)}/pids.current") as f:
            now = int(f.read())
        if now >= at_least and now == last:
            return now
        last = now
        await asyncio.sleep(0.3)
    raise AssertionError(f"the bomb did not grow to {at_least} processes (at {last})")


# Each shell starts three more, to depth 7: 1,093 shells and 2,187 sleeps, 3,280 processes, whatever the limit.
BOUNDED_BOMB = "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & b $(($1-1)) & wait; else exec sleep 600; fi; }; b 7"


async def test_a_fork_bomb_in_a_default_sandbox_is_bounded_and_killed(state_dir: Path) -> None:
    token = f"GC_BOMB={uuid.uuid4().hex}"
    sandbox = await AsyncSandbox("docker", config()).start()
    container_id = _container(sandbox.sandbox_id)["Id"]
    try:
        handle = await sandbox.start_process(BOUNDED_BOMB, environment=dict([token.split("=", 1)]))
        grown = await _wait_until_grown(container_id, 3000)
        assert grown <= await _pids(sandbox, "max")
        started = time.monotonic()
        await asyncio.wait_for(handle.kill(), 30)
        took = time.monotonic() - started
        assert took < 2, f"kill() took {took:.2f} s for {grown} processes"
        assert handle.return_code == 137
        assert not _processes_with(token, container_id), "bomb processes are left on the host"
        left = (await sandbox.execute("ps -o args")).stdout.splitlines()
        assert not [line for line in left if "sleep 600" in line or "b()" in line], left
    finally:
        _kill_from_the_host(token, container_id)
        await sandbox.aclose()


# Python, so that a failed fork is retried (a shell gives up): the bomb keeps the container at its pids
# limit. A binary tree of depth 7: at most 255 processes, whatever the limit.
SATURATING_BOMB = """
import os, time
def node(depth):
    for _ in range(2 if depth else 0):
        while True:
            try:
                pid = os.fork()
            except OSError:
                time.sleep(0.01)
                continue
            if pid == 0:
                node(depth - 1)
                os._exit(0)
            break
    time.sleep(600)
node(7)
"""


async def test_a_fork_bomb_at_the_pids_limit_is_killed_and_the_rest_goes_on() -> None:
    """At the limit the kill script cannot fork: kill() stops everything, lends pids, kills, restores."""
    token = f"GC_BOMB={uuid.uuid4().hex}"
    sandbox = await AsyncSandbox(
        "docker", config(image=PYTHON_IMAGE, provider_config={"pids_limit": 64})
    ).start()
    container_id = _container(sandbox.sandbox_id)["Id"]
    try:
        await sandbox.execute("sleep 600 >/dev/null 2>&1 &")  # the sandbox's own work, not the bomb's
        handle = await sandbox.start_process(
            f"python3 -c {shlex.quote(SATURATING_BOMB)}", environment=dict([token.split("=", 1)])
        )
        assert await _wait_until_grown(container_id, 64) >= 64
        started = time.monotonic()
        await asyncio.wait_for(handle.kill(), 30)
        took = time.monotonic() - started
        assert took < 2, f"kill() at the pids limit took {took:.2f} s"
        assert not _processes_with(token, container_id), "bomb processes are left on the host"
        assert _container(sandbox.sandbox_id)["HostConfig"]["PidsLimit"] == 64
        assert await _pids(sandbox, "max") == 64
        sleeping = await sandbox.execute("ps -o stat,args | grep '^[A-Z]* *sleep 600'")
        assert sleeping.stdout.split()[0] == "S", f"the sandbox's own process was not continued: {sleeping}"
    finally:
        _kill_from_the_host(token, container_id)
        await sandbox.aclose()
