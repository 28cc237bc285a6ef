"""The modal provider against the in-repo fake of Modal (tests/providers/modal_fake): the unmodified SDK
talks its real gRPC protocol (the control plane and the task command router) to a server on 127.0.0.1,
where commands really run and files are files. Both clients, each behaviour the adapter promises, and each
mapped error (the fake injects gRPC statuses and slow answers)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _support import close
from grpclib.const import Status

from grainchain import SandboxConfig
from grainchain.errors import (
    AuthenticationError,
    CapabilityError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    OutputLimitExceededError,
    RateLimitError,
    RemoteError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import SandboxStatus, SnapshotKind
from tests.providers.modal_fake import FakeModal

pytestmark = [
    pytest.mark.timeout(120),
    # the blocking client runs on the test's event loop thread here (tests/_support.py's AwaitableSync), which
    # modal warns about: a blocking script has no loop
    pytest.mark.filterwarnings("ignore::modal.exception.AsyncUsageWarning"),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModal]:
    with FakeModal() as server:
        yield server


@pytest.fixture(autouse=True)
def modal_env(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK pointed at the fake (MODAL_SERVER_URL and the token pair), and nothing left after."""
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    fake.clear_faults()
    yield
    fake.clear_faults()
    deadline = time.monotonic() + 5
    while fake.sandboxes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fake.sandboxes(), f"modal sandboxes left after the test: {fake.sandboxes()}"


def alive_probe(pid: str | int) -> str:
    """A command that prints alive or gone: a zombie (killed, not yet reaped) counts as gone."""
    return f's=$(cut -d\' \' -f3 /proc/{pid}/stat 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ] && echo alive || echo gone'


async def sdk_client() -> Any:
    """A client of the bare SDK for the server and token pair the environment names (the SDK's default
    client is made once per process, for the first server: a test session has several fakes)."""
    import modal

    return await modal.Client.from_credentials.aio(
        os.environ["MODAL_TOKEN_ID"], os.environ["MODAL_TOKEN_SECRET"]
    )


def config(**fields: Any) -> SandboxConfig:
    return SandboxConfig(**fields)


async def test_execute_returns_output_and_exit_codes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(environment_vars={"GREETING": "hi"}), provider="modal")
    result = await sandbox.execute("echo $GREETING; echo oops >&2; pwd")
    assert (result.stdout, result.stderr, result.return_code) == ("hi\n/workspace\n", "oops\n", 0)
    failed = await sandbox.execute("echo partial; exit 3")
    assert (failed.return_code, failed.success, failed.stdout) == (3, False, "partial\n")
    killed = await sandbox.execute("kill -9 $$")
    assert killed.return_code == 137  # a signal shows as 128 + N, as on every provider
    await sandbox.make_directory("sub")
    here = await sandbox.execute("pwd; echo $X", working_dir="sub", environment={"X": "call"})
    assert here.stdout == "/workspace/sub\ncall\n"
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.execute("true", working_dir="no-such-dir")


async def test_streaming_callbacks_see_output_as_it_comes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="modal")
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = await sandbox.execute(
        "echo one; sleep 1; echo two >&2; echo three",
        on_stdout=lambda text: seen.append((time.monotonic() - started, text)),
    )
    assert "".join(text for _, text in seen) == result.stdout == "one\nthree\n"
    assert result.stderr == "two\n"
    assert seen[0][0] < 0.9, f"the first line came only at the end: {seen}"


async def test_timeout_raises_with_partial_output_and_leaves_nothing_running(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="modal")
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute("echo begun; sleep 30 & echo $! > child.pid; sleep 30", timeout=1.5)
    assert time.monotonic() - started < 8
    assert caught.value.stdout == "begun\n"
    child = (await sandbox.download_file("child.pid")).decode().strip()
    probe = await sandbox.execute(alive_probe(child))
    assert probe.stdout == "gone\n", "the command's background child survived its timeout"


async def test_output_cap(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(output_limit=10_000), provider="modal")
    started = time.monotonic()
    with pytest.raises(OutputLimitExceededError):
        await sandbox.execute("yes | head -c 1000000; sleep 20", timeout=15)
    assert time.monotonic() - started < 10, "the capped command ran on to its timeout"


async def test_background_process_handle(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="modal")
    handle = await sandbox.start_process("echo started; echo $$ > bg.pid; sleep 30")
    assert handle.pid is None  # Modal gives an exec'd process none
    assert handle.id
    deadline = time.monotonic() + 5
    while "started" not in handle.stdout and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a handle)
        await asyncio.sleep(0.05)
    assert handle.stdout == "started\n"
    assert handle.is_running
    pid = (await sandbox.download_file("bg.pid")).decode().strip()
    await handle.kill()
    assert handle.return_code == 137
    assert (await sandbox.execute(alive_probe(pid))).stdout == "gone\n"
    quick = await sandbox.start_process("echo done; exit 4")
    result = await quick.wait(timeout=10)
    assert (result.stdout, result.return_code) == ("done\n", 4)


async def test_files_round_trip_binary_and_metadata(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="modal")
    blob = os.urandom(3 << 20)
    await sandbox.upload_file("data/blob.bin", blob)
    assert await sandbox.download_file("data/blob.bin") == blob
    assert (await sandbox.execute("sha256sum data/blob.bin")).stdout.split()[0] == __import__(
        "hashlib"
    ).sha256(blob).hexdigest()
    odd = b"\xff\xfe not utf-8 \x80\n"
    await sandbox.upload_file("/tmp/odd.bin", odd)
    assert await sandbox.download_file("/tmp/odd.bin") == odd
    await sandbox.upload_file("data/blob.bin", "more", mode="a")
    assert (await sandbox.download_file("data/blob.bin"))[-4:] == b"more"
    await sandbox.execute("chmod 640 data/blob.bin; ln -s blob.bin data/link; mkdir data/dir")
    listing = {info.name: info for info in await sandbox.list_files("data")}
    assert set(listing) == {"blob.bin", "link", "dir"}
    assert listing["blob.bin"].size == (3 << 20) + 4
    assert listing["blob.bin"].mode == 0o640
    assert listing["blob.bin"].path == "/workspace/data/blob.bin"
    assert listing["link"].is_symlink
    assert not listing["link"].is_directory
    assert listing["dir"].is_directory
    assert listing["dir"].size == 0
    info = await sandbox.get_file_info("data/blob.bin")
    assert not info.is_directory
    assert abs(info.modified_time.timestamp() - time.time()) < 60
    assert await sandbox.file_exists("data/dir")
    assert not await sandbox.file_exists("data/nothing")
    await sandbox.delete_file("data")  # a tree
    assert not await sandbox.file_exists("data")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.download_file("data/blob.bin")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.delete_file("data")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.list_files("data")
    await sandbox.make_directory("a/b/c")
    assert (await sandbox.get_file_info("a/b/c")).is_directory
    with pytest.raises(InvalidArgumentError):
        await sandbox.download_file("a/b")  # a directory
    await sandbox.upload_file("a/file", "x")
    with pytest.raises(InvalidArgumentError):
        await sandbox.make_directory("a/file")


async def test_list_and_connect_find_only_grainchain_sandboxes(make_sandbox: Any) -> None:
    import modal

    from grainchain import AsyncSandbox

    client = await sdk_client()
    app = await modal.App.lookup.aio("grainchain", create_if_missing=True, client=client)
    image = modal.Image.debian_slim()  # (not the default: the SDK keeps that one for its first server)
    foreign = await modal.Sandbox.create.aio(
        app=app, image=image, tags={"owner": "someone else"}, client=client
    )
    try:
        sandbox = await make_sandbox(
            config(auto_cleanup=False, environment_vars={"K": "v"}), provider="modal"
        )
        await sandbox.upload_file("kept.txt", "kept")
        listed = {info.sandbox_id: info for info in await AsyncSandbox.list_sandboxes(provider="modal")}
        assert sandbox.sandbox_id in listed
        modal_ids = [info.metadata["modal_sandbox_id"] for info in listed.values()]
        assert foreign.object_id not in modal_ids, "a sandbox that is not grainchain's was listed"
        assert listed[sandbox.sandbox_id].status is SandboxStatus.running
        assert abs(listed[sandbox.sandbox_id].created_at.timestamp() - time.time()) < 60
        await sandbox.start_process("sleep 300")
        await close(sandbox)  # kept: it runs on, without grainchain's processes
        again = await AsyncSandbox.connect(
            sandbox.sandbox_id, provider="modal", config=config(auto_cleanup=True)
        )
        async with again:
            assert await again.download_file("kept.txt") == b"kept"
            assert (await again.execute("echo $K")).stdout == "v\n", "connect lost the sandbox's config"
            left = await again.execute("ps -eo args | grep -c '^sleep 300' || true")
            assert left.stdout.strip() == "0", "a process of the closed client outlived its close"
        with pytest.raises(SandboxNotFoundError):
            await AsyncSandbox.connect(sandbox.sandbox_id, provider="modal")
    finally:
        await foreign.terminate.aio()


async def test_filesystem_snapshot_restore_keeps_the_sandbox_id(make_sandbox: Any) -> None:
    from grainchain import AsyncSandbox

    sandbox = await make_sandbox(provider="modal")
    await sandbox.upload_file("state.txt", "v1")
    snapshot = await sandbox.create_snapshot()
    await sandbox.upload_file("state.txt", "v2")
    listed = await sandbox.list_snapshots()
    assert [(s.snapshot_id, s.kind, s.source_sandbox_id) for s in listed] == [
        (snapshot, SnapshotKind.filesystem, sandbox.sandbox_id)
    ]
    await sandbox.restore_snapshot(snapshot)
    assert await sandbox.download_file("state.txt") == b"v1"
    ids = [info.sandbox_id for info in await AsyncSandbox.list_sandboxes(provider="modal")]
    assert ids.count(sandbox.sandbox_id) == 1, "the Modal sandbox a restore replaced was not terminated"
    other = await make_sandbox(provider="modal")  # a snapshot restores into any sandbox
    await other.restore_snapshot(snapshot)
    assert await other.download_file("state.txt") == b"v1"
    await sandbox.delete_snapshot(snapshot)
    assert await sandbox.list_snapshots() == []
    with pytest.raises(SnapshotNotFoundError):
        await sandbox.restore_snapshot(snapshot)
    with pytest.raises(CapabilityError, match=r"snapshot\.memory"):
        await sandbox.create_snapshot(SnapshotKind.memory)


async def test_terminate_keeps_files_not_processes_and_wake_up_brings_them_back(make_sandbox: Any) -> None:
    from grainchain import AsyncSandbox

    sandbox = await make_sandbox(provider="modal")
    await sandbox.upload_file("notes.txt", "before")
    await sandbox.execute("sleep 300 >/dev/null 2>&1 &")
    await sandbox.terminate()
    assert sandbox.status is SandboxStatus.terminated
    listed = {info.sandbox_id: info for info in await AsyncSandbox.list_sandboxes(provider="modal")}
    assert listed[sandbox.sandbox_id].status is SandboxStatus.terminated
    await sandbox.wake_up()
    assert await sandbox.download_file("notes.txt") == b"before"
    left = await sandbox.execute("ps -eo args | grep -c '^sleep 300' || true")
    assert left.stdout.strip() == "0"


async def test_lifetime_and_idle_timeout_reach_modal(fake: FakeModal, make_sandbox: Any) -> None:
    sandbox = await make_sandbox(
        config(provider_config={"lifetime": 120, "idle_timeout": 60}), provider="modal"
    )
    tags = fake.tags()
    (definition,) = [
        d for i, d in fake.definitions().items() if tags[i].get("grainchain_sandbox_id") == sandbox.sandbox_id
    ]
    assert (definition.timeout_secs, definition.idle_timeout_secs) == (120, 60)


@pytest.mark.parametrize(
    ("network", "reached"),
    [("internet", True), ("none", False), (["127.0.0.1"], True), (["10.0.0.0/8"], False)],
)
async def test_network_policy_is_enforced(
    make_sandbox: Any, host_server: int, network: Any, reached: bool
) -> None:
    """provider_config `network`: "none" is Modal's block_network, an allow-list its outbound_cidr_allowlist (the
    fake enforces it for the host's loopback, its only network)."""
    sandbox = await make_sandbox(config(provider_config={"network": network}), provider="modal")
    probe = (
        "python3 -c 'import socket,sys; socket.create_connection((\"127.0.0.1\", int(sys.argv[1])), 2)' "
        f"{host_server} 2>/dev/null && echo reached || echo blocked"
    )
    result = await sandbox.execute(probe, timeout=10)
    assert result.stdout.strip() == ("reached" if reached else "blocked")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("network", "off", "internet"),
        ("network", [], '"none"'),
        ("network", ["10.0.0.0/33"], "neither an IP address"),
        ("network", ["example.com"], "no host names"),
        ("tags", {"grainchain_sandbox_id": "mine"}, "grainchain's own"),
        ("image", 42, "modal.Image"),
        ("lifetime", 0, "greater than 0"),
    ],
)
async def test_bad_provider_config_is_a_configuration_error(key: str, value: Any, message: str) -> None:
    from grainchain import AsyncSandbox

    with pytest.raises(ConfigurationError, match=key) as caught:
        AsyncSandbox("modal", config(provider_config={key: value}))
    assert message in str(caught.value)


async def test_limits_are_refused_not_ignored() -> None:
    from grainchain import AsyncSandbox

    with pytest.raises(CapabilityError, match=r"limits\.memory"):
        await AsyncSandbox("modal", config(memory_limit="1GB")).start()


async def test_the_api_documents_image_example_runs(make_sandbox: Any) -> None:
    """provider_config={"image": modal.Image.from_registry(...).pip_install([...]), ...} as the API document
    writes it (the fake records the image's build steps; it does not run them)."""
    import modal

    image = modal.Image.from_registry("python:3.11-slim").pip_install(["numpy"])
    sandbox = await make_sandbox(config(provider_config={"image": image}), provider="modal")
    assert (await sandbox.execute("echo ok")).stdout == "ok\n"


# -- errors --------------------------------------------------------------------------------------------


async def test_wrong_token_is_an_authentication_error(make_sandbox: Any) -> None:
    wrong = config(provider_config={"token_id": "ak-wrong", "token_secret": "as-wrong-secret"})
    with pytest.raises(AuthenticationError) as caught:
        await make_sandbox(wrong, provider="modal")
    assert "as-wrong-secret" not in str(caught.value)
    assert caught.value.retryable is False


async def test_resource_exhausted_is_a_rate_limit_error(fake: FakeModal, make_sandbox: Any) -> None:
    fake.inject(r"SandboxCreateV2$", status=Status.RESOURCE_EXHAUSTED, times=50)
    with pytest.raises(RateLimitError) as caught:
        await make_sandbox(provider="modal")
    assert caught.value.retryable is True


async def test_unavailable_control_plane_is_retried_then_retryable(
    fake: FakeModal, make_sandbox: Any
) -> None:
    before = fake.calls(r"SandboxCreateV2$")
    fake.inject(r"SandboxCreateV2$", status=Status.UNAVAILABLE, times=1)
    sandbox = await make_sandbox(provider="modal")  # the SDK's own retry
    assert fake.calls(r"SandboxCreateV2$") - before >= 2
    assert sandbox.status is SandboxStatus.running
    fake.inject(r"SandboxCreateV2$", status=Status.UNAVAILABLE, times=100)
    with pytest.raises(RemoteError) as caught:
        await make_sandbox(provider="modal")
    assert caught.value.retryable is True


async def test_a_sandbox_gone_underneath_is_sandbox_not_found(fake: FakeModal, make_sandbox: Any) -> None:
    import modal

    sandbox = await make_sandbox(provider="modal")
    client = await sdk_client()
    app = await modal.App.lookup.aio("grainchain", client=client)
    tags = {"grainchain_sandbox_id": sandbox.sandbox_id}
    found = modal.Sandbox.list.aio(app_id=app.app_id, tags=tags, client=client)
    (modal_id,) = [sb.object_id async for sb in found]
    await (await modal.Sandbox.from_id.aio(modal_id, client=client)).terminate.aio()
    with pytest.raises(SandboxNotFoundError):
        await sandbox.execute("true")


async def test_dockerfile_builds_the_image(make_sandbox: Any, tmp_path: Any) -> None:
    """provider_config `dockerfile` / `build_context` (modal.Image.from_dockerfile): what the Dockerfile
    did is in the sandbox; a failing build is an error, not a sandbox of another image."""
    (tmp_path / "hello.txt").write_text("from the context\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM python:3.11-slim\nRUN echo built > /built.txt\nENV GREETING=hi\nCOPY hello.txt /opt/hello.txt\n"
    )
    built = config(
        provider_config={"dockerfile": str(tmp_path / "Dockerfile"), "build_context": str(tmp_path)}
    )
    sandbox = await make_sandbox(built, provider="modal")
    result = await sandbox.execute("cat /built.txt /opt/hello.txt; echo $GREETING; pwd")
    assert result.stdout == "built\nfrom the context\nhi\n/workspace\n"
    (tmp_path / "Broken").write_text("FROM python:3.11-slim\nRUN echo failing; exit 3\n")
    broken = config(provider_config={"dockerfile": str(tmp_path / "Broken"), "build_context": str(tmp_path)})
    with pytest.raises(GrainchainError, match="failing"):
        await make_sandbox(broken, provider="modal")
