"""The docker provider against a real engine (image grainchain-test/busybox:latest, built offline by
.ci/docker-up). Without an engine the module skips with one reason, unless GRAINCHAIN_REQUIRE_DOCKER=1
(CI), where it fails."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import httpx
import pytest

from grainchain import AsyncSandbox, SandboxConfig
from grainchain import _docker as dk
from grainchain.errors import (
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    OutputLimitExceededError,
    ProviderUnavailableError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.sync import Sandbox as SyncSandbox

IMAGE = "grainchain-test/busybox:latest"
RUN = f"GRAINCHAIN_TEST_RUN={uuid.uuid4().hex}"  # marks this run's containers (others may run concurrently)


def _engine_error() -> str | None:
    """None when an engine answers with the test image present, else why not."""
    endpoint = dk.engine_endpoint()
    if endpoint.uds and not os.path.exists(endpoint.uds):
        return f"no docker engine: {endpoint.describe()} does not exist; run .ci/docker-up"
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    try:
        with httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=5) as client:
            if client.get("/_ping").status_code != 200:
                return f"the docker engine at {endpoint.describe()} does not answer /_ping"
            if client.get(f"/images/{IMAGE}/json").status_code != 200:
                return f"the docker engine has no image {IMAGE} (run .ci/docker-up)"
    except (httpx.HTTPError, OSError) as exc:
        return f"no docker engine at {endpoint.describe()} ({exc}); run .ci/docker-up"
    return None


_REASON = _engine_error()
if _REASON is not None:
    if os.environ.get("GRAINCHAIN_REQUIRE_DOCKER") == "1":
        raise RuntimeError(f"GRAINCHAIN_REQUIRE_DOCKER=1 but {_REASON}")
    pytest.skip(_REASON, allow_module_level=True)


def config(image: str = IMAGE, **fields: Any) -> SandboxConfig:
    env = {**fields.pop("environment_vars", {}), RUN.split("=")[0]: RUN.split("=")[1]}
    return SandboxConfig(image=image, environment_vars=env, **fields)


def _our_containers() -> list[str]:
    """grainchain containers (found by label) that this test run created."""
    endpoint = dk.engine_endpoint()
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    filters = json.dumps({"label": [f"{dk.LABEL}=1", dk.LABEL_SANDBOX]})
    with httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=10) as client:
        found = client.get("/containers/json", params={"all": "1", "filters": filters}).json()
        ours = []
        for container in found:
            inspected = client.get(f"/containers/{container['Id']}/json")
            if inspected.status_code == 200 and RUN in (inspected.json()["Config"].get("Env") or []):
                ours.append(container["Labels"][dk.LABEL_SANDBOX])
    return ours


@pytest.fixture(scope="module", autouse=True)
def no_container_left() -> Any:
    yield
    left = _our_containers()
    assert not left, f"grainchain containers left after the tests: {left}"


async def test_exec_env_cwd_and_exit_code(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(
        config(environment_vars={"FROM_CONFIG": "c v"}, working_directory="proj"), provider="docker"
    )
    result = await sandbox.execute(
        'echo "$FROM_CONFIG|$PER_CALL"; pwd; echo oops >&2; exit 7', environment={"PER_CALL": "p'v"}
    )
    assert (result.return_code, result.stdout, result.stderr) == (7, "c v|p'v\n/workspace/proj\n", "oops\n")
    assert (await sandbox.execute("pwd", working_dir="/tmp")).stdout == "/tmp\n"
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.execute("true", working_dir="missing")


async def test_timeout_kills_inside_the_container(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    with pytest.raises(CommandTimeoutError) as info:
        await sandbox.execute("echo early; (sleep 300 &) ; setsid sleep 301 & sleep 302", timeout=1)
    assert info.value.stdout == "early\n"
    left = (await sandbox.execute("ps -o args | grep -c '^sleep 30[012]' || true")).stdout.strip()
    assert left == "0"


async def test_streaming_and_output_limit(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(output_limit="10KB"), provider="docker")
    chunks: list[str] = []
    result = await sandbox.execute("printf 'é'; sleep 0.2; printf 'x\\n' >&2", on_stdout=chunks.append)
    assert "".join(chunks) == result.stdout == "é"
    with pytest.raises(OutputLimitExceededError):
        await sandbox.execute("head -c 1000000 /dev/zero")
    assert (await sandbox.execute("echo ok")).stdout == "ok\n"


async def test_background_process(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    handle = await sandbox.start_process("echo up; sleep 60")
    with pytest.raises(CommandTimeoutError):
        await handle.wait(timeout=1)  # does not kill it
    assert handle.stdout == "up\n"
    assert handle.is_running
    await handle.kill()
    assert handle.return_code == 137
    done = await sandbox.start_process("echo bye; exit 4")
    result = await done.wait(timeout=30)
    assert (result.return_code, result.stdout) == (4, "bye\n")


async def test_files_round_trip(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    data = bytes(range(256)) * 100
    await sandbox.upload_file("deep/er/bin", data, mode="wb")
    await sandbox.upload_file("deep/er/bin", b"tail", mode="ab")
    assert await sandbox.download_file("/workspace/deep/er/bin") == data + b"tail"
    info = await sandbox.get_file_info("deep/er/bin")
    assert (info.path, info.size, info.is_directory) == ("/workspace/deep/er/bin", len(data) + 4, False)
    await sandbox.execute("ln -s er/bin deep/link")
    listing = {i.name: i for i in await sandbox.list_files("deep")}
    assert listing["er"].is_directory
    assert listing["link"].is_symlink
    assert await sandbox.download_file("deep/link") == data + b"tail"
    await sandbox.make_directory("deep/x/y")
    assert await sandbox.file_exists("deep/x/y")
    await sandbox.delete_file("deep")
    assert not await sandbox.file_exists("deep")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.download_file("deep/er/bin")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.delete_file("deep")


async def test_snapshot_restores_and_starts_a_new_sandbox(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    sandbox_id = sandbox.sandbox_id
    await sandbox.upload_file("kept", "v1")
    snapshot = await sandbox.create_snapshot()
    try:
        await sandbox.upload_file("kept", "v2")
        await sandbox.upload_file("added", "x")
        await sandbox.restore_snapshot(snapshot)
        assert sandbox.sandbox_id == sandbox_id
        assert await sandbox.download_file("kept") == b"v1"
        assert not await sandbox.file_exists("added")
        assert snapshot in {s.snapshot_id for s in await sandbox.list_snapshots()}
        other = await make_sandbox(config(image=snapshot), provider="docker")
        assert (await other.execute("cat kept")).stdout == "v1"
    finally:
        await sandbox.delete_snapshot(snapshot)
    with pytest.raises(SnapshotNotFoundError):
        await sandbox.restore_snapshot(snapshot)
    with pytest.raises(SnapshotNotFoundError):
        await sandbox.delete_snapshot("busybox:latest")  # never deletes an image that is not a snapshot


async def test_limits_are_enforced(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(
        config(memory_limit="32MB", cpu_limit=0.5, provider_config={"pids_limit": 64}), provider="docker"
    )
    result = await sandbox.execute("dd if=/dev/zero of=/dev/null bs=100M count=1")
    assert result.return_code == 137  # SIGKILL by the OOM killer
    assert (await sandbox.execute("echo alive")).stdout == "alive\n"
    cgroups = "/sys/fs/cgroup"  # cgroups v1 inside the container (this machine's kind)
    shown = await sandbox.execute(f"cat {cgroups}/cpu/cpu.cfs_quota_us {cgroups}/pids/pids.max")
    if shown.return_code == 0:  # cgroups v2 engines lay them out differently
        assert shown.stdout.split() == ["50000", "64"]


async def test_network_none_has_only_loopback(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(provider_config={"network": "none"}), provider="docker")
    result = await sandbox.execute("ls /sys/class/net; wget -T 2 -q -O- http://1.1.1.1/ 2>&1")
    assert result.stdout.split()[0] == "lo"
    assert "eth0" not in result.stdout
    assert result.return_code != 0


def test_detach_list_connect_and_close() -> None:
    first = SyncSandbox("docker", config()).start()
    sandbox_id = first.sandbox_id
    try:
        first.upload_file("mark", "here")
        first.detach()
        assert sandbox_id in {s.sandbox_id for s in SyncSandbox.list_sandboxes("docker")}
        again = SyncSandbox.connect(sandbox_id, "docker")
        assert again.execute("cat mark").stdout == "here"
        again.close()
    finally:
        first.close()
    assert sandbox_id not in {s.sandbox_id for s in SyncSandbox.list_sandboxes("docker")}
    with pytest.raises(SandboxNotFoundError):
        SyncSandbox.connect(sandbox_id, "docker")


async def test_missing_image_is_a_clear_error() -> None:
    with pytest.raises(ProviderUnavailableError, match="no-such-image-grainchain"):
        await AsyncSandbox("docker", config(image="no-such-image-grainchain:1")).start()


async def test_unreachable_engine_says_how_to_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ProviderUnavailableError, match="start the Docker engine"):
        await AsyncSandbox("docker", config()).start()


def test_frame_decoder_splits_partial_frames() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03abc" + b"\x02\x00\x00\x00\x00\x00\x00\x02de"
    decoder = dk.FrameDecoder()
    got = [f for i in range(len(frames)) for f in decoder.feed(frames[i : i + 1])]
    assert got == [(1, b"abc"), (2, b"de")]
