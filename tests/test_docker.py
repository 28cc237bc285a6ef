"""The docker provider against a real engine (image grainchain-test/busybox:latest, built offline by
.ci/docker-up). Without an engine the module skips with one reason, unless GRAINCHAIN_REQUIRE_DOCKER=1
(CI), where it fails."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    CapabilityError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    MemoryLimitExceededError,
    NotFoundError,
    OutputLimitExceededError,
    ProviderError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SnapshotNotFoundError,
)
from grainchain.models import SandboxStatus, SnapshotKind
from grainchain.providers.docker import _engine as dk
from grainchain.providers.docker._async.adapter import _memory_snapshot_problem
from grainchain.sync import Sandbox as SyncSandbox

IMAGE = "grainchain-test/busybox:latest"
RUN = f"GRAINCHAIN_TEST_RUN={uuid.uuid4().hex}"  # marks this run's containers (others may run concurrently)


def _engine_client(timeout: float = 30) -> httpx.Client:
    """A plain client of the engine, for checks made without grainchain."""
    endpoint = dk.engine_endpoint()
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    return httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=timeout)


def _engine_info() -> dict[str, Any]:
    with _engine_client() as client:
        info: dict[str, Any] = client.get("/info").json()
        return info


def _engine_error() -> str | None:
    """None when an engine answers with the test image present, else why not."""
    endpoint = dk.engine_endpoint()
    if endpoint.uds and not os.path.exists(endpoint.uds):
        return f"no docker engine: {endpoint.describe()} does not exist; run .ci/docker-up"
    try:
        with _engine_client(timeout=5) as client:
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
    filters = json.dumps({"label": [f"{dk.LABEL}=1", dk.LABEL_SANDBOX]})
    with _engine_client() as client:
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


# a background counter; rename makes each value appear whole
COUNTER = "(i=0; while :; do i=$((i+1)); echo $i > .c; mv .c counter; sleep 0.05; done) > /dev/null 2>&1 &"


async def _count(sandbox: Any) -> int:
    return int((await sandbox.execute("cat counter")).stdout)


async def _counting(sandbox: Any, at_least: int) -> int:
    """Wait until the counter has reached `at_least`; its value then."""
    for _ in range(200):
        if await sandbox.file_exists("counter") and (value := await _count(sandbox)) >= at_least:
            return value
        await _sleep(0.05)
    raise AssertionError("the counter does not count")


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_memory_snapshot_lets_a_process_continue_after_terminate(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    await sandbox.execute(COUNTER)
    await _counting(sandbox, 5)
    snapshot = await sandbox.create_snapshot(kind="memory")
    try:
        at_snapshot = await _count(sandbox)
        later = await _counting(sandbox, at_snapshot + 20)  # it kept counting through the snapshot
        await sandbox.terminate()
        assert sandbox.status is SandboxStatus.terminated
        with pytest.raises(SandboxNotRunningError, match="wake_up"):
            await sandbox.execute("true")
        await sandbox.wake_up(snapshot)
        assert sandbox.status is SandboxStatus.running
        resumed = await _count(sandbox)
        # memory and files came back from the snapshot: the same process counts on from where it was
        assert at_snapshot - 10 <= resumed < later, (at_snapshot, resumed, later)
        assert await _counting(sandbox, resumed + 5) > resumed
        kinds = {s.snapshot_id: s.kind for s in await sandbox.list_snapshots()}
        assert kinds[snapshot] is SnapshotKind.memory
    finally:
        await sandbox.delete_snapshot(snapshot)


async def test_memory_snapshot_restores_into_another_sandbox_and_deletes_cleanly(
    make_sandbox: Any, state_dir: Path
) -> None:
    source = await make_sandbox(config(), provider="docker")
    await source.execute(COUNTER)
    await _counting(source, 5)
    snapshot = await source.create_snapshot(kind=SnapshotKind.memory)
    saved = list((state_dir / "docker" / "checkpoints").iterdir())
    assert len(saved) == 1
    assert (saved[0] / "inventory.img").exists(), "the saved checkpoint is not CRIU's"
    try:
        await source.execute("kill $(pgrep -f 'i=0' || true) 2>/dev/null; true")
        target = await make_sandbox(config(), provider="docker")
        await target.restore_snapshot(snapshot)
        first = await _count(target)
        assert await _counting(target, first + 5) > first  # a process runs there now
        await target.restore_snapshot(snapshot)  # the same checkpoint restores twice (moby#42900)
        assert await _counting(target, 1) >= 1
    finally:
        await source.delete_snapshot(snapshot)
    assert not saved[0].exists(), "deleting the snapshot keeps its checkpoint"
    with pytest.raises(SnapshotNotFoundError):
        await source.restore_snapshot(snapshot)


async def test_memory_snapshot_refuses_attached_processes_and_keeps_them(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    handle = await sandbox.start_process("sleep 30")
    with pytest.raises(ProviderError, match=r"start_process\(\)"):
        await sandbox.create_snapshot(kind="memory")
    assert handle.is_running
    await handle.kill()
    snapshot = await sandbox.create_snapshot(kind="memory")
    await sandbox.delete_snapshot(snapshot)
    with pytest.raises(Exception, match="kind must be one of 'filesystem', 'memory'"):
        await sandbox.create_snapshot(kind="disk")


async def test_terminate_then_wake_up_keeps_files_but_not_processes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    await sandbox.upload_file("kept", "yes")
    await sandbox.execute(COUNTER)
    await _counting(sandbox, 3)
    await sandbox.terminate()
    await sandbox.wake_up()
    assert await sandbox.download_file("kept") == b"yes"
    stopped = await _count(sandbox)
    await _sleep(0.3)
    assert await _count(sandbox) == stopped, "a process survived terminate without a memory snapshot"


def test_memory_snapshot_problems_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    local = dk.Endpoint("http://docker", "/var/run/docker.sock")
    remote = dk.Endpoint("http://10.0.0.2:2375", None)
    ok = {"ExperimentalBuild": True, "DockerRootDir": str(tmp_path)}
    assert dk.memory_snapshot_problem(local, ok, "/x/criu") is None
    assert dk.memory_snapshot_problem(local, {**ok, "ExperimentalBuild": False}, "/x/criu") == (
        "the Docker engine does not run in experimental mode (start dockerd with --experimental)"
    )
    assert "is remote" in str(dk.memory_snapshot_problem(remote, ok, "/x/criu"))
    assert "CRIU is not installed" in str(dk.memory_snapshot_problem(local, ok, None))
    missing_root = {**ok, "DockerRootDir": str(tmp_path / "nonexistent")}
    assert "cannot write" in str(dk.memory_snapshot_problem(local, missing_root, "/x/criu"))


async def test_the_engine_decides_memory_snapshot_support(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(), provider="docker")
    problem = _memory_snapshot_problem(dk.engine_endpoint(), _engine_info())
    assert (sandbox.capabilities["snapshot.memory"] != "unsupported") is (problem is None)
    if problem is not None:
        with pytest.raises(CapabilityError, match="not available here"):
            await sandbox.create_snapshot(kind="memory")


async def test_a_memory_snapshot_is_refused_where_the_engine_cannot_restore_it(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore_snapshot passes the gate with either snapshot kind; the id of a memory snapshot, where the
    engine cannot restore processes (as missing_features found), is refused (CapabilityError naming
    snapshot.memory, with the reason) before the running container is touched."""
    sandbox = await make_sandbox(config(), provider="docker")
    facade = getattr(sandbox, "_target", sandbox)  # the sync client behind the test's await wrapper
    if not facade.supports("snapshot.memory"):
        pytest.skip("this engine takes no memory snapshots: nothing to restore")
    await sandbox.upload_file("mine", "kept")
    snapshot = await sandbox.create_snapshot(kind=SnapshotKind.memory)
    try:
        monkeypatch.setattr(facade._adapter.backend, "memory_problems", {"snapshot.memory": "no CRIU (test)"})
        await sandbox.upload_file("mine", "changed")
        with pytest.raises(CapabilityError, match=r"no CRIU \(test\)") as info:
            await sandbox.restore_snapshot(snapshot)
        assert (info.value.feature, info.value.operation) == ("snapshot.memory", "restore_snapshot")
        assert await sandbox.download_file("mine") == b"changed"  # untouched
    finally:
        monkeypatch.undo()
        await sandbox.delete_snapshot(snapshot)


def _remove_image(image: str) -> None:
    with _engine_client() as client:
        client.delete(f"/images/{image}", params={"force": "1"})


async def test_dockerfile_builds_the_image_once_and_is_used(
    make_sandbox: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text(f"hello from the build context {uuid.uuid4().hex}\n")
    (tmp_path / "Dockerfile.test").write_text(  # outside the context: it is added to it
        f"FROM {IMAGE}\nCOPY hello.txt /opt/hello.txt\nRUN echo built > /opt/built\nENV FROM_DOCKERFILE=yes\n"
    )
    build = {"dockerfile": str(tmp_path / "Dockerfile.test"), "build_context": str(context)}
    caplog.set_level("INFO", logger="grainchain.docker")
    sandbox = await make_sandbox(config(provider_config=build), provider="docker")
    try:
        result = await sandbox.execute("cat /opt/hello.txt /opt/built; echo $FROM_DOCKERFILE")
        assert result.stdout == (context / "hello.txt").read_text() + "built\nyes\n"
        built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("build ")]
        assert any(re.search(r"Step 2/\d+ : COPY hello.txt /opt/hello.txt", line) for line in built), built
        caplog.clear()
        again = await make_sandbox(config(provider_config=build), provider="docker")
        assert (await again.execute("cat /opt/built")).stdout == "built\n"
        assert not [r for r in caplog.records if r.getMessage().startswith("build")], "built twice"
    finally:
        _remove_image("grainchain-build:" + dk.build_context(build["dockerfile"], build["build_context"])[2])


async def test_failing_dockerfile_says_which_step_failed(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo about to fail; exit 3\n")
    with pytest.raises(ConfigurationError) as info:
        await AsyncSandbox("docker", config(provider_config={"build_context": str(tmp_path)})).start()
    assert "returned a non-zero code: 3" in str(info.value)
    assert "about to fail" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="no Dockerfile at"):
        await AsyncSandbox("docker", config(provider_config={"dockerfile": str(tmp_path / "nope")})).start()


def _volume_names() -> set[str]:
    with _engine_client() as client:
        return {v["Name"] for v in client.get("/volumes").json().get("Volumes") or []}


def _volume(method: str, name: str) -> None:
    with _engine_client() as client:
        if method == "create":
            client.post("/volumes/create", json={"Name": name}).raise_for_status()
        else:
            client.delete(f"/volumes/{name}")


async def test_volumes_mount_and_only_the_sandboxes_own_are_removed(tmp_path: Path) -> None:
    (tmp_path / "from-host.txt").write_text("host data")
    mine, theirs = f"gc-test-{uuid.uuid4().hex[:8]}", f"gc-test-{uuid.uuid4().hex[:8]}"
    async with AsyncSandbox("docker", config(provider_config={"volumes": [f"{theirs}:/data"]})) as first:
        await first.execute("echo kept > /data/file")  # creates `theirs` as the first sandbox's volume
    assert theirs not in _volume_names(), "a volume the sandbox created outlived it"
    _volume("create", mine)  # the user's own volume
    try:
        volumes = [f"{tmp_path}:/host:ro", f"{mine}:/mine", "/scratch"]
        async with AsyncSandbox("docker", config(provider_config={"volumes": volumes})) as sandbox:
            shown = await sandbox.execute("cat /host/from-host.txt; echo x > /mine/f; echo y > /scratch/f")
            assert (shown.stdout, shown.return_code) == ("host data", 0)
            assert (await sandbox.execute("touch /host/nope")).return_code != 0, "ro bind is writable"
        assert mine in _volume_names(), "closing removed a volume the sandbox did not create"
    finally:
        _volume("delete", mine)
    with pytest.raises(InvalidArgumentError, match=r"provider_config\['volumes'\]"):
        await AsyncSandbox("docker", config(provider_config={"volumes": ["relative"]})).start()
    with pytest.raises(InvalidArgumentError, match="is not a directory on this machine"):
        await AsyncSandbox("docker", config(provider_config={"volumes": ["/no/such/dir:/x"]})).start()


async def test_ttl_stops_a_forgotten_sandbox(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(provider_config={"ttl": 2}), provider="docker")
    assert (await sandbox.execute("echo alive")).stdout == "alive\n"
    await _sleep(3.5)
    with pytest.raises(SandboxNotRunningError, match="ttl"):
        await sandbox.execute("echo too late")
    with pytest.raises(ConfigurationError, match="'ttl': Input should be greater than 0"):
        AsyncSandbox("docker", config(provider_config={"ttl": -1}))  # refused when the Sandbox is made


async def test_ports_are_published_on_loopback(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(ports=[8080, 9090]), provider="docker")
    first, second = await sandbox.port_address(8080), await sandbox.port_address(9090)
    assert first.startswith("127.0.0.1:")
    assert second.startswith("127.0.0.1:")
    assert first != second
    with pytest.raises(
        InvalidArgumentError, match=r"port 22 is not in SandboxConfig.ports \(\[8080, 9090\]\)"
    ):
        await sandbox.port_address(22)


async def test_limits_are_enforced(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(
        config(memory_limit="32MB", cpu_limit=0.5, provider_config={"pids_limit": 64}), provider="docker"
    )
    assert (await sandbox.execute("false")).return_code == 1  # a failure is not blamed on memory
    with pytest.raises(MemoryLimitExceededError) as info:
        await sandbox.execute("echo before; dd if=/dev/zero of=/dev/null bs=100M count=1")
    assert info.value.return_code == 137  # SIGKILL by the OOM killer
    assert info.value.limit == 32_000_000
    assert info.value.stdout == "before\n"
    assert "memory limit" in str(info.value)
    assert (await sandbox.execute("exit 3")).return_code == 3  # the OOM kill is reported once
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


async def test_missing_image_is_a_configuration_error_naming_it() -> None:
    """The engine's 404 for the image is not the sandbox missing: a ConfigurationError naming the image."""
    with pytest.raises(ConfigurationError, match="no-such-image-grainchain:1") as caught:
        await AsyncSandbox("docker", config(image="no-such-image-grainchain:1")).start()
    assert not isinstance(caught.value, NotFoundError)
    assert (caught.value.retryable, caught.value.operation) == (False, "create")


async def test_missing_snapshot_image_is_snapshot_not_found() -> None:
    with pytest.raises(SnapshotNotFoundError, match="grainchain-snapshot:0123456789abcdef0123"):
        await AsyncSandbox("docker", config(image="grainchain-snapshot:0123456789abcdef0123")).start()


async def test_missing_network_is_a_configuration_error() -> None:
    cfg = config(provider_config={"network": "gc-no-such-network-7f3a"})
    with pytest.raises(ConfigurationError, match="gc-no-such-network-7f3a"):
        await AsyncSandbox("docker", cfg).start()


def test_connect_to_an_unknown_id_is_sandbox_not_found() -> None:
    with pytest.raises(SandboxNotFoundError, match="gc-no-such-sandbox-0000"):
        SyncSandbox.connect("gc-no-such-sandbox-0000", "docker")


async def test_a_container_removed_outside_grainchain_is_sandbox_not_found(make_sandbox: Any) -> None:
    """Only the sandbox's own container missing is SandboxNotFoundError, for commands and for files (whose
    HEAD request's 404 has no body to tell a missing path from a missing container)."""
    sandbox = await make_sandbox(config(), provider="docker")
    await sandbox.upload_file("here", "x")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.download_file("not-here")
    filters = json.dumps({"label": [f"{dk.LABEL_SANDBOX}={sandbox.sandbox_id}"]})
    with _engine_client() as client:
        [container] = client.get("/containers/json", params={"all": "1", "filters": filters}).json()
        assert client.delete(f"/containers/{container['Id']}", params={"force": "1"}).status_code == 204
    with pytest.raises(SandboxNotFoundError, match="container is gone"):
        await sandbox.execute("true")
    with pytest.raises(SandboxNotFoundError):
        await sandbox.download_file("here")
    with pytest.raises(SandboxNotFoundError):
        await sandbox.file_exists("not-here")


async def test_unreachable_engine_is_a_retryable_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(BackendConnectionError, match="start the Docker engine") as caught:
        await AsyncSandbox("docker", config()).start()
    assert caught.value.retryable is True
    assert "/nonexistent/docker.sock" in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


async def test_engine_socket_with_nobody_listening_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket file that is left while dockerd is down: the connect itself fails (through httpx)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = os.path.join(directory, "docker.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(path)  # never listens: connecting is refused
            monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
            with pytest.raises(BackendConnectionError, match="is dockerd running") as caught:
                await AsyncSandbox("docker", config()).start()
    assert caught.value.retryable is True
    assert path in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError | ConnectionError)


def test_engine_404s_are_mapped_by_what_is_missing() -> None:
    def error(url: str, said: str) -> Exception:
        return dk.engine_error(404, json.dumps({"message": said}).encode() if said else b"", "call", url)

    assert isinstance(error("/containers/abc/exec", "No such container: abc"), SandboxNotFoundError)
    for url, said, kind in [
        ("/containers/create", "No such image: nope:1", "image"),
        ("/images/nope:1/json", "No such image: nope:1", "image"),
        ("/images/create", "pull access denied for nope, repository does not exist", "image"),
        ("/volumes/v", "get v: no such volume", "volume"),
        ("/exec/123/json", "No such exec instance: 123", "exec"),
        ("/containers/abc/archive", "", "path"),  # a HEAD: no body
        ("/containers/abc/archive", "Could not find the file /x in container abc", "path"),
        ("/containers/create", "network gc-nope not found", "network"),
    ]:
        mapped = error(url, said)
        assert isinstance(mapped, dk.EngineNotFoundError), (url, said)
        assert not isinstance(mapped, NotFoundError), (url, said)
        assert (mapped.kind, mapped.retryable) == (kind, False), (url, said)


def test_engine_transport_failures_are_retryable() -> None:
    endpoint = dk.Endpoint("http://docker", "/run/x.sock")
    request = httpx.Request("GET", "http://docker/info")
    timeout = dk.transport_error(endpoint, "engine info", httpx.ReadTimeout("", request=request))
    assert isinstance(timeout, BackendTimeoutError)
    assert timeout.retryable is True
    assert "did not answer in time (ReadTimeout)" in timeout.message
    for broken in (
        httpx.ReadError("reset", request=request),
        httpx.RemoteProtocolError("Server disconnected", request=request),
        httpx.ConnectError("refused", request=request),
    ):
        mapped = dk.transport_error(endpoint, "engine info", broken)
        assert isinstance(mapped, BackendConnectionError), broken
        assert mapped.retryable is True
        assert mapped.__cause__ is broken
        assert "unix:///run/x.sock" in mapped.message
    other = dk.transport_error(endpoint, "engine info", httpx.DecodingError("bad", request=request))
    assert type(other) is ProviderError


def test_exec_start_connections_are_not_kept_for_reuse() -> None:
    """The engine only half-closes an exec's hijacked connection. Without dk.EXEC_START_HEADERS the
    client's connection goes back to idle, and a pool shared by threads or tasks can hand it to a
    concurrent request, which then fails (the benchmark's concurrent batch did, about 1 in 200 runs)."""
    endpoint = dk.engine_endpoint()
    if not endpoint.uds:
        pytest.skip("checked over the engine's unix socket")
    origin = httpcore.Origin(b"http", b"localhost", 80)
    with _engine_client() as client:
        body = {"Image": IMAGE, "Cmd": ["sleep", "60"], "Labels": {dk.LABEL: "1"}}
        container = client.post("/containers/create", json=body).json()["Id"]
        try:
            assert client.post(f"/containers/{container}/start").status_code == 204

            def connection_after_exec(headers: dict[str, str]) -> httpcore.HTTPConnection:
                exec_body = {"AttachStdout": True, "Cmd": ["echo", "hi"]}
                exec_id = client.post(f"/containers/{container}/exec", json=exec_body).json()["Id"]
                connection = httpcore.HTTPConnection(origin, uds=endpoint.uds)
                response = connection.request(
                    "POST",
                    f"http://localhost/exec/{exec_id}/start",
                    headers={"Content-Type": "application/json", **headers},
                    content=json.dumps({"Detach": False, "Tty": False}).encode(),
                )
                assert (response.status, response.content) == (200, b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n")
                return connection

            plain = connection_after_exec({})
            engine_closed_its_end = plain.is_idle() and plain.has_expired()
            assert engine_closed_its_end, "the engine changed: is the header still needed?"
            plain.close()
            assert connection_after_exec(dk.EXEC_START_HEADERS).is_closed()
        finally:
            client.delete(f"/containers/{container}", params={"force": "1"})


def test_frame_decoder_splits_partial_frames() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03abc" + b"\x02\x00\x00\x00\x00\x00\x00\x02de"
    decoder = dk.FrameDecoder()
    got = [f for i in range(len(frames)) for f in decoder.feed(frames[i : i + 1])]
    assert got == [(1, b"abc"), (2, b"de")]


def test_listing_parser_handles_empty_and_awkward_names() -> None:
    assert dk.parse_listing("/w", b"\0") == []
    out = b"./b\0./a\nb\0\0" + b"81a4 3 1700000000\n41ed 4096 1700000001\n"
    entries = dk.parse_listing("/w", out)
    assert [(e["path"], e["size"], e["is_directory"]) for e in entries] == [
        ("/w/a\nb", 0, True),
        ("/w/b", 3, False),
    ]


async def test_volumes_of_a_sandbox_that_fails_to_start_are_removed() -> None:
    name = f"gc-test-{uuid.uuid4().hex[:8]}"
    cfg = config(image="no-such-image-grainchain:1", provider_config={"volumes": [f"{name}:/data"]})
    with pytest.raises(ConfigurationError):
        await AsyncSandbox("docker", cfg).start()
    assert name not in _volume_names()
