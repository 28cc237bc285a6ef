"""Ownership, expiry and cleanup (grainchain/_ownership.py): `grainchain sandboxes / snapshots / cleanup`.

A real client process makes sandboxes and is SIGKILLed; cleanup must find what it left (and nothing
else: kept and detached sandboxes, live owners), remove it, and `--dry-run` must remove nothing. Snapshots
are listed and deleted only in their namespace; prune deletes expired ones only. Local and docker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from _support import grainchain_script
from conftest import sandbox_processes

from grainchain import AsyncSandbox, SandboxConfig
from grainchain import _ownership as ownership
from grainchain._commands import SANDBOX_MARKER
from grainchain.errors import SnapshotNotFoundError
from grainchain.providers.docker import _engine as dk
from grainchain.providers.local import _cleanup as local_cleanup
from grainchain.settings import load_settings
from grainchain.sync import Sandbox

DOCKER_IMAGE = "grainchain-test/busybox:latest"

# The client: makes one sandbox per config given (JSON on argv), starts a background command in each,
# detaches those asked, prints their ids and waits to be killed.
CLIENT = """
import json, sys, time
from grainchain import SandboxConfig
from grainchain.sync import Sandbox
provider, specs = sys.argv[1], json.loads(sys.argv[2])
ids = []
for spec in specs:
    detach = spec.pop("detach", False)
    sandbox = Sandbox(provider, SandboxConfig(**spec)).start()
    sandbox.execute("sleep 600 > /dev/null 2>&1 &")
    ids.append(sandbox.sandbox_id)
    if detach:
        sandbox.detach()
print(json.dumps(ids), flush=True)
time.sleep(600)
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grainchain_script(), *args], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def killed_client(provider: str, specs: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Run CLIENT, SIGKILL it once its sandboxes are made: (their ids, its pid)."""
    with subprocess.Popen(
        [sys.executable, "-c", CLIENT, provider, json.dumps(specs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            return json.loads(line), proc.pid
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def marked(sandbox_id: str) -> list[int]:
    """Host pids of processes carrying the sandbox's marker."""
    from _procs import process_environments

    marker = f"{SANDBOX_MARKER}={sandbox_id}".encode()
    return [pid for pid, environ in process_environments() if marker in environ]


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def wait_until(check: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- owners -----------------------------------------------------------------------------------------------


def test_owner_states() -> None:
    me = ownership.Owner.current()
    assert me.state() == "alive"
    assert ownership.Owner.from_stored(me.stored()) == me
    assert ownership.Owner(me.pid, "1", me.boot, me.machine).state() == "dead"  # the pid, reused
    assert ownership.Owner(me.pid, me.start, "another-boot", me.machine).state() == "dead"  # rebooted
    assert ownership.Owner(me.pid, me.start, me.boot, "another-machine").state() == "unknown"
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert ownership.Owner(gone.pid, "1", me.boot, me.machine).state() == "dead"
    assert ownership.Owner(gone.pid).state() == "dead"  # a pid only (recorded before owners were)
    with subprocess.Popen(["true"]) as zombie:  # ended, not yet waited for
        assert wait_until(lambda: "Z" in Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2][:3])
        assert ownership.Owner(zombie.pid, None, me.boot, me.machine).state() == "dead"


# -- local ------------------------------------------------------------------------------------------------


def test_cleanup_reaps_a_killed_clients_local_sandboxes(state_dir: Path) -> None:
    ids, client_pid = killed_client("local", [{}, {}, {"keep_alive": True}, {"detach": True}])
    dead, dead_too, kept, detached = ids
    # leftovers of a killed snapshot and probe, and a probe that is still young
    snapshots = state_dir / "local" / "snapshots"
    staging = snapshots / f".staging-snap-{uuid.uuid4().hex}"
    (staging / "tree").mkdir(parents=True)
    owner = ownership.Owner(client_pid, "1", ownership.boot_id(), ownership.machine_id())
    (staging / ".owner").write_text(json.dumps(owner.stored()))
    live_staging = snapshots / f".staging-snap-{uuid.uuid4().hex}"
    live_staging.mkdir()
    (live_staging / ".owner").write_text(json.dumps(ownership.Owner.current().stored()))
    probe = state_dir / "local" / ".overlay-probe-old"
    (probe / "merged").mkdir(parents=True)
    if os.geteuid() == 0:  # a stale mount in it, as a killed probe leaves
        subprocess.run(["mount", "-t", "tmpfs", "none", str(probe / "merged")], check=True)
    old = time.time() - 2 * local_cleanup.STALE_PROBE
    os.utime(probe, (old, old))
    young_probe = state_dir / "local" / ".overlay-probe-young"
    young_probe.mkdir()
    box = state_dir / "local" / "sandboxes"
    try:
        listed = {r["sandbox_id"]: r for r in cli_json("sandboxes", "--provider", "local")}
        assert set(listed) == set(ids)
        assert [listed[i]["reapable"] for i in ids] == [True, True, False, False]
        assert listed[kept]["owner"] == "dead"
        assert listed[kept]["kept"]
        assert listed[detached]["owner"] == "detached"
        for sandbox_id in ids:
            assert marked(sandbox_id), f"{sandbox_id}'s processes should outlive the killed client"

        would = cli_json("cleanup", "--provider", "local", "--dry-run")
        names = {(r["kind"], r["name"]) for r in would}
        assert names == {
            ("sandbox", dead),
            ("sandbox", dead_too),
            ("staging", str(staging.resolve())),
            ("probe", str(probe.resolve())),
        }, would
        assert all(r["result"] == "would remove" for r in would)
        assert all(marked(i) for i in ids)
        assert staging.exists()
        assert probe.exists()
        assert all((box / i).is_dir() for i in ids)

        removed = cli_json("cleanup", "--provider", "local")
        assert sorted(r["result"] for r in removed) == ["removed"] * 4, removed
        for sandbox_id in (dead, dead_too):
            assert wait_until(lambda s=sandbox_id: not marked(s)), f"{sandbox_id}: processes left"
            assert not (box / sandbox_id).exists()
            assert not mounts_under(box / sandbox_id)
        assert not staging.exists()
        assert not probe.exists()
        assert live_staging.exists()
        assert young_probe.exists()
        for sandbox_id in (kept, detached):  # meant to outlive their client
            assert marked(sandbox_id)
            assert (box / sandbox_id).is_dir()
        assert cli_json("cleanup", "--provider", "local", "--dry-run") == []  # idempotent
    finally:  # (also what a failure left: pytest's basetemp cannot be deleted under a mount)
        for sandbox_id in ids:
            if (box / sandbox_id).exists():
                result = cli("sandboxes", "close", sandbox_id)
                assert result.returncode == 0, result.stderr
        if mounts_under(probe):
            subprocess.run(["umount", str(probe / "merged")], check=False)
    assert not sandbox_processes(state_dir)
    assert not mounts_under(state_dir)
    assert sorted(p.name for p in box.iterdir()) == []


async def test_local_snapshots_are_scoped_to_their_namespace(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncSandbox("local", settings=load_settings(namespace="team-a")) as a:
        await a.upload_file("f", "a")
        theirs = await a.create_snapshot()
        assert [s.snapshot_id for s in await a.list_snapshots()] == [theirs]
    async with AsyncSandbox("local", settings=load_settings(namespace="team-b")) as b:
        assert await b.list_snapshots() == []
        with pytest.raises(SnapshotNotFoundError):
            await b.delete_snapshot(theirs)
        mine = await b.create_snapshot()
        assert [s.snapshot_id for s in await b.list_snapshots()] == [mine]
        await b.restore_snapshot(theirs)  # an id is a capability: restoring it is allowed
    # a snapshot made before namespaces (no namespace in its meta.json) is the default namespace's
    async with AsyncSandbox("local") as default:
        legacy = await default.create_snapshot()
        meta = state_dir / "local" / "snapshots" / legacy / "meta.json"
        data = json.loads(meta.read_text())
        del data["namespace"], data["expires_at"]
        meta.write_text(json.dumps(data))
        assert [s.snapshot_id for s in await default.list_snapshots()] == [legacy]

    monkeypatch.setenv("GRAINCHAIN_NAMESPACE", "team-b")
    assert [r["snapshot_id"] for r in cli_json("snapshots", "--provider", "local")] == [mine]
    refused = cli("snapshots", "delete", theirs)
    assert refused.returncode == 1
    assert "snapshot" in refused.stderr.lower(), refused.stderr
    assert cli("snapshots", "delete", legacy).returncode == 1
    monkeypatch.setenv("GRAINCHAIN_NAMESPACE", "team-a")
    assert [r["snapshot_id"] for r in cli_json("snapshots", "list", "--provider", "local")] == [theirs]
    assert cli("snapshots", "delete", theirs).returncode == 0
    assert cli_json("snapshots", "--provider", "local") == []
    monkeypatch.delenv("GRAINCHAIN_NAMESPACE")
    assert [r["snapshot_id"] for r in cli_json("snapshots", "--provider", "local")] == [legacy]


async def test_local_prune_deletes_expired_snapshots_only(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncSandbox("local", settings=load_settings(snapshot_ttl=0.5)) as short:
        expiring = await short.create_snapshot()
    async with AsyncSandbox("local", settings=load_settings(snapshot_ttl=3600)) as long:
        lasting = await long.create_snapshot()
    async with AsyncSandbox("local") as never:
        forever = await never.create_snapshot()
    listed = {r["snapshot_id"]: r for r in cli_json("snapshots", "--provider", "local")}
    assert listed[forever]["expires_at"] is None
    assert listed[lasting]["expires_at"] is not None
    await asyncio.sleep(0.6)
    dry = cli("snapshots", "prune", "--provider", "local", "--dry-run")
    assert dry.returncode == 0
    assert expiring in dry.stdout
    assert "1 expired" in dry.stdout, dry.stdout
    assert len(cli_json("snapshots", "--provider", "local")) == 3
    pruned = cli("snapshots", "prune", "--provider", "local", "--expired")
    assert pruned.returncode == 0
    assert "deleted 1" in pruned.stdout, pruned.stdout
    assert {r["snapshot_id"] for r in cli_json("snapshots", "--provider", "local")} == {lasting, forever}


# -- docker -----------------------------------------------------------------------------------------------


def _docker_problem() -> str | None:
    endpoint = dk.engine_endpoint()
    if endpoint.uds and not os.path.exists(endpoint.uds):
        return f"no docker engine at {endpoint.describe()}"
    try:
        with _docker() as client:
            if client.get(f"/images/{DOCKER_IMAGE}/json").status_code != 200:
                return f"the docker engine has no image {DOCKER_IMAGE} (run .ci/docker-up)"
    except (httpx.HTTPError, OSError) as exc:
        return f"no docker engine ({exc})"
    return None


def _docker() -> httpx.Client:
    endpoint = dk.engine_endpoint()
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    return httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=30)


@pytest.fixture
def docker() -> Iterator[httpx.Client]:
    if (problem := _docker_problem()) is not None:
        if os.environ.get("GRAINCHAIN_REQUIRE_DOCKER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    with _docker() as client:
        yield client


def containers_of(client: httpx.Client, sandbox_id: str) -> list[dict[str, Any]]:
    filters = json.dumps({"label": [f"{dk.LABEL}=1", f"{dk.LABEL_SANDBOX}={sandbox_id}"]})
    found: list[dict[str, Any]] = client.get(
        "/containers/json", params={"all": "1", "filters": filters}
    ).json()
    return found


def test_cleanup_reaps_a_killed_clients_docker_sandboxes(
    state_dir: Path, docker: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAINCHAIN_NAMESPACE", f"test-{uuid.uuid4().hex[:12]}")  # this test's only
    image = {"image": DOCKER_IMAGE}
    ids, _ = killed_client("docker", [image, {**image, "keep_alive": True}, {**image, "detach": True}])
    dead, kept, detached = ids
    try:
        listed = {r["sandbox_id"]: r for r in cli_json("sandboxes", "--provider", "docker")}
        assert set(listed) == set(ids)
        assert [listed[i]["reapable"] for i in ids] == [True, False, False]
        would = cli_json("cleanup", "--provider", "docker", "--dry-run")
        assert [(r["kind"], r["name"].split()[0]) for r in would] == [("container", dead)], would
        assert all(containers_of(docker, i) for i in ids)  # nothing removed
        removed = cli_json("cleanup", "--provider", "docker")
        assert [r["result"] for r in removed] == ["removed"], removed
        assert containers_of(docker, dead) == []
        assert containers_of(docker, kept)
        assert containers_of(docker, detached)
        assert cli_json("cleanup", "--provider", "docker", "--dry-run") == []
    finally:
        for sandbox_id in ids:
            if containers_of(docker, sandbox_id):
                result = cli("sandboxes", "close", sandbox_id)
                assert result.returncode == 0, result.stderr
    assert all(containers_of(docker, i) == [] for i in ids)


def test_docker_snapshots_are_scoped_and_pruned(
    docker: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = f"test-{uuid.uuid4().hex[:12]}", f"test-{uuid.uuid4().hex[:12]}"
    config = SandboxConfig(image=DOCKER_IMAGE)
    made: list[str] = []
    try:
        with Sandbox("docker", config, settings=load_settings(namespace=a, snapshot_ttl=0.5)) as sa:
            expiring = sa.create_snapshot()
            made.append(expiring)
        with Sandbox("docker", config, settings=load_settings(namespace=a)) as sa:
            lasting = sa.create_snapshot()
            made.append(lasting)
            assert {s.snapshot_id for s in sa.list_snapshots()} == {expiring, lasting}
        with Sandbox("docker", config, settings=load_settings(namespace=b)) as sb:
            assert sb.list_snapshots() == []
            with pytest.raises(SnapshotNotFoundError):
                sb.delete_snapshot(lasting)
        monkeypatch.setenv("GRAINCHAIN_NAMESPACE", b)
        assert cli_json("snapshots", "--provider", "docker") == []
        assert cli("snapshots", "delete", lasting).returncode == 1
        time.sleep(0.6)
        assert "0 expired" in cli("snapshots", "prune", "-p", "docker", "--dry-run").stdout
        monkeypatch.setenv("GRAINCHAIN_NAMESPACE", a)
        listed = {r["snapshot_id"]: r for r in cli_json("snapshots", "--provider", "docker")}
        assert set(listed) == {expiring, lasting}
        assert listed[expiring]["expired"]
        assert "1 expired" in cli("snapshots", "prune", "-p", "docker", "--dry-run").stdout
        assert {r["snapshot_id"] for r in cli_json("snapshots", "--provider", "docker")} == set(listed)
        assert cli("snapshots", "prune", "-p", "docker").returncode == 0
        assert [r["snapshot_id"] for r in cli_json("snapshots", "--provider", "docker")] == [lasting]
        assert cli("snapshots", "delete", lasting).returncode == 0
        assert cli_json("snapshots", "--provider", "docker") == []
    finally:
        for ref in made:
            docker.delete(f"/images/{ref}", params={"force": "1"})


def test_expiry_of_a_setting() -> None:
    settings = load_settings(snapshot_ttl=60)
    now = datetime.now(UTC)
    expires = ownership.expiry(settings, now)
    assert expires == now + timedelta(seconds=60)
    assert not ownership.expired(expires, now)
    assert ownership.expired(expires, now + timedelta(seconds=61))
    assert ownership.expiry(load_settings(), now) is None


def test_cli_refuses_what_it_cannot_inspect() -> None:
    usage = cli("cleanup", "--provider", "e2b", "--dry-run")
    assert usage.returncode == 2, usage.stderr
    assert "only local, docker" in usage.stderr
    unknown = cli("sandboxes", "close", f"local-{uuid.uuid4().hex}")
    assert unknown.returncode == 1
    assert "no local sandbox" in unknown.stderr
    assert cli("sandboxes", "close", "whatever").returncode == 2  # no provider told by the id
    assert cli("snapshots", "delete", f"snap-{uuid.uuid4().hex}").returncode == 1
