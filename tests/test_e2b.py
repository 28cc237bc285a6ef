"""The e2b provider against the in-repo fake of E2B (tests/providers/e2b_fake): the unmodified SDK talks its
real wire protocols (REST control plane, Connect-RPC envd, HTTP /files) to a server on 127.0.0.1, where
commands really run and files are files. Both clients, each behaviour the adapter promises, and each
mapped error (the fake injects 401, 404, 429, 503, slow answers and dropped streams)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _support import close

from grainchain import SandboxConfig, SnapshotKind
from grainchain.errors import (
    AuthenticationError,
    BackendTimeoutError,
    CapabilityError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    RateLimitError,
    RemoteError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)
from grainchain.models import SandboxStatus
from tests.providers.e2b_fake import FakeE2B

pytestmark = pytest.mark.timeout(120)
CREATE = r"^(/v2)?/sandboxes$"  # the control plane's create (POST) route


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeE2B]:
    with FakeE2B() as server:
        yield server


@pytest.fixture(autouse=True)
def e2b_env(fake: FakeE2B, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK pointed at the fake (as a user points it at a self-hosted E2B), and nothing left after."""
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    fake.clear_faults()  # what a test injected and did not use up
    yield
    fake.clear_faults()
    deadline = time.monotonic() + 5
    while fake.sandboxes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fake.sandboxes(), f"e2b sandboxes left after the test (fake id: metadata): {fake.metadata()}"


def alive_probe(pid: str | int) -> str:
    """A command that prints alive or gone: a zombie (killed, not yet reaped by init) counts as gone."""
    return f's=$(cut -d\' \' -f3 /proc/{pid}/stat 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ] && echo alive || echo gone'


def config(**fields: Any) -> SandboxConfig:
    return SandboxConfig(**fields)


async def test_execute_returns_output_and_exit_codes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config(environment_vars={"GREETING": "hi"}), provider="e2b")
    result = await sandbox.execute("echo $GREETING; echo oops >&2; pwd")
    assert (result.stdout, result.stderr, result.return_code) == ("hi\n/home/user\n", "oops\n", 0)
    failed = await sandbox.execute("echo partial; exit 3")  # the SDK raises CommandExitException
    assert (failed.return_code, failed.success, failed.stdout) == (3, False, "partial\n")
    killed = await sandbox.execute("kill -9 $$")
    assert killed.return_code == 137  # a signal shows as 128 + N, as on every provider
    await sandbox.make_directory("sub")
    here = await sandbox.execute("pwd; echo $X", working_dir="sub", environment={"X": "call"})
    assert here.stdout == "/home/user/sub\ncall\n"
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.execute("true", working_dir="no-such-dir")


async def test_streaming_callbacks_see_output_as_it_comes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = await sandbox.execute(
        "echo one; sleep 1; echo two", on_stdout=lambda text: seen.append((time.monotonic() - started, text))
    )
    assert "".join(text for _, text in seen) == result.stdout == "one\ntwo\n"
    assert seen[0][0] < 0.9, f"the first line came only at the end: {seen}"


async def test_timeout_raises_with_partial_output_and_leaves_nothing_running(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute("echo begun; sleep 30 & echo $! > child.pid; sleep 30", timeout=1.5)
    assert time.monotonic() - started < 6
    assert caught.value.stdout == "begun\n"
    child = (await sandbox.download_file("child.pid")).decode().strip()
    probe = await sandbox.execute(alive_probe(child))
    assert probe.stdout == "gone\n", "the command's background child survived its timeout"


async def test_output_cap(make_sandbox: Any) -> None:
    from grainchain.errors import OutputLimitExceededError

    sandbox = await make_sandbox(config(output_limit=10_000), provider="e2b")
    with pytest.raises(OutputLimitExceededError):
        await sandbox.execute("yes | head -c 1000000; sleep 20", timeout=15)


async def test_background_process_handle(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    handle = await sandbox.start_process("echo started; sleep 30")
    assert handle.pid is not None
    assert handle.id == str(handle.pid)
    deadline = time.monotonic() + 5
    while "started" not in handle.stdout and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a handle)
        await asyncio.sleep(0.05)
    assert handle.stdout == "started\n"
    assert handle.is_running
    await handle.kill()
    assert handle.return_code == 137
    probe = await sandbox.execute(alive_probe(handle.pid))
    assert probe.stdout == "gone\n"
    quick = await sandbox.start_process("echo done; exit 4")
    result = await quick.wait(timeout=10)
    assert (result.stdout, result.return_code) == ("done\n", 4)


async def test_files_round_trip_binary_and_metadata(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    blob = os.urandom(1 << 20)
    await sandbox.upload_file("data/blob.bin", blob)
    assert await sandbox.download_file("data/blob.bin") == blob
    odd = b"\xff\xfe not utf-8 \x80\n"
    await sandbox.upload_file("/tmp/odd.bin", odd)
    assert await sandbox.download_file("/tmp/odd.bin") == odd
    assert (await sandbox.execute("cat /tmp/odd.bin | od -An -tx1 | head -1")).stdout.split()[:2] == [
        "ff",
        "fe",
    ]
    await sandbox.upload_file("data/blob.bin", "more", mode="a")
    assert (await sandbox.download_file("data/blob.bin"))[-4:] == b"more"
    await sandbox.execute("chmod 640 data/blob.bin; ln -s blob.bin data/link; mkdir data/dir")
    listing = {info.name: info for info in await sandbox.list_files("data")}
    assert set(listing) == {"blob.bin", "link", "dir"}
    assert listing["blob.bin"].size == (1 << 20) + 4
    assert listing["blob.bin"].mode == 0o640
    assert listing["blob.bin"].path == "/home/user/data/blob.bin"
    assert listing["link"].is_symlink
    assert not listing["link"].is_directory
    assert listing["dir"].is_directory
    assert listing["dir"].size == 0
    info = await sandbox.get_file_info("data/blob.bin")
    assert not info.is_directory
    assert abs(info.modified_time.timestamp() - time.time()) < 60
    assert await sandbox.file_exists("data/dir")
    assert not await sandbox.file_exists("data/nothing")
    await sandbox.delete_file("data/dir")
    await sandbox.delete_file("data")  # a tree
    assert not await sandbox.file_exists("data")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.download_file("data/blob.bin")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.delete_file("data")
    await sandbox.make_directory("a/b/c")
    assert (await sandbox.get_file_info("a/b/c")).is_directory
    with pytest.raises(InvalidArgumentError):
        await sandbox.download_file("a/b")  # a directory
    await sandbox.upload_file("a/file", "x")
    with pytest.raises(InvalidArgumentError):
        await sandbox.make_directory("a/file")


async def test_list_and_connect_find_only_grainchain_sandboxes(make_sandbox: Any) -> None:
    import e2b

    from grainchain import AsyncSandbox

    foreign = await e2b.AsyncSandbox.create(metadata={"owner": "someone else"})  # (E2B_API_KEY)
    try:
        sandbox = await make_sandbox(config(auto_cleanup=False), provider="e2b")
        await sandbox.upload_file("kept.txt", "kept")
        listed = {info.sandbox_id: info for info in await AsyncSandbox.list_sandboxes(provider="e2b")}
        assert sandbox.sandbox_id in listed
        assert foreign.sandbox_id not in listed
        assert listed[sandbox.sandbox_id].status is SandboxStatus.running
        await close(sandbox)
        listed = {info.sandbox_id: info for info in await AsyncSandbox.list_sandboxes(provider="e2b")}
        assert listed[sandbox.sandbox_id].status is SandboxStatus.terminated  # kept, paused
        again = await AsyncSandbox.connect(
            sandbox.sandbox_id, provider="e2b", config=config(auto_cleanup=True)
        )
        async with again:
            assert await again.download_file("kept.txt") == b"kept"
        with pytest.raises(SandboxNotFoundError):
            await AsyncSandbox.connect(sandbox.sandbox_id, provider="e2b")
    finally:
        await foreign.kill()


async def test_filesystem_snapshot_restore_keeps_the_sandbox_id(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    await sandbox.upload_file("state.txt", "v1")
    snapshot = await sandbox.create_snapshot()
    await sandbox.upload_file("state.txt", "v2")
    listed = await sandbox.list_snapshots()
    assert [(s.snapshot_id, s.kind, s.source_sandbox_id) for s in listed] == [
        (snapshot, SnapshotKind.filesystem, sandbox.sandbox_id)
    ]
    await sandbox.restore_snapshot(snapshot)
    assert await sandbox.download_file("state.txt") == b"v1"
    from grainchain import AsyncSandbox

    ids = [info.sandbox_id for info in await AsyncSandbox.list_sandboxes(provider="e2b")]
    assert ids.count(sandbox.sandbox_id) == 1, "the E2B sandbox a restore replaced was not killed"
    await sandbox.delete_snapshot(snapshot)
    assert await sandbox.list_snapshots() == []
    with pytest.raises(SnapshotNotFoundError):
        await sandbox.restore_snapshot(snapshot)


async def test_labels_reach_the_sandboxs_metadata(make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """provider_config `metadata` (here from [providers.e2b] defaults, as the live tests label theirs)."""
    import e2b

    monkeypatch.setenv("GRAINCHAIN_PROVIDERS", '{"e2b": {"metadata": {"team": "search"}}}')
    sandbox = await make_sandbox(provider="e2b")
    found = await e2b.AsyncSandbox.list(query=e2b.SandboxQuery(metadata={"team": "search"})).next_items()
    assert [info.metadata["grainchain_sandbox_id"] for info in found] == [sandbox.sandbox_id]
    mine = config(provider_config={"metadata": {"grainchain_sandbox_id": "mine"}})
    with pytest.raises(ConfigurationError, match="grainchain's own"):
        await make_sandbox(mine, provider="e2b")


async def test_terminate_pauses_and_wake_up_resumes(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    await sandbox.execute(
        "(i=0; while :; do i=$((i+1)); echo $i > n.tmp; mv n.tmp n; sleep 0.05; done) >/dev/null 2>&1 &"
    )
    await asyncio.sleep(0.3)
    await sandbox.terminate()
    assert sandbox.status is SandboxStatus.terminated
    await sandbox.wake_up()
    first = int((await sandbox.download_file("n")).decode())
    await asyncio.sleep(0.4)
    assert int((await sandbox.download_file("n")).decode()) > first, "the counter did not go on after wake_up"


async def test_lifetime_is_set_and_keep_alive_extends_it(fake: FakeE2B, make_sandbox: Any) -> None:
    import e2b

    sandbox = await make_sandbox(config(provider_config={"lifetime": 120}), provider="e2b")
    (found,) = [
        i
        for i in await e2b.AsyncSandbox.list(api_key=fake.api_key).next_items()
        if i.metadata.get("grainchain_sandbox_id") == sandbox.sandbox_id
    ]
    assert abs((found.end_at - found.started_at).total_seconds() - 120) < 5


@pytest.mark.parametrize(
    ("network", "reached"),
    [("internet", True), ("none", False), (["127.0.0.1"], True), (["10.0.0.0/8", "example.com"], False)],
)
async def test_network_policy_is_enforced(
    make_sandbox: Any, host_server: int, network: Any, reached: bool
) -> None:
    """provider_config `network`: "none" is E2B's allow_internet_access=False, an allow-list its allow_out
    with every other address denied (the fake enforces it for the host's loopback, its only network)."""
    sandbox = await make_sandbox(config(provider_config={"network": network}), provider="e2b")
    probe = f"(exec 3<>/dev/tcp/127.0.0.1/{host_server}) 2>/dev/null && echo reached || echo blocked"
    result = await sandbox.execute(probe, timeout=10)
    assert result.stdout.strip() == ("reached" if reached else "blocked")


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("off", "internet"),
        ([], '"none"'),
        (["10.0.0.0/33"], "neither an IP address"),
        (["not a host!"], "neither an IP address"),
    ],
)
async def test_bad_network_is_a_configuration_error(network: Any, message: str) -> None:
    from grainchain import AsyncSandbox

    with pytest.raises(ConfigurationError, match="network") as caught:
        AsyncSandbox("e2b", config(provider_config={"network": network}))
    assert message in str(caught.value)


async def test_limits_are_refused_not_ignored() -> None:
    from grainchain import AsyncSandbox

    with pytest.raises(CapabilityError, match=r"limits\.memory"):
        await AsyncSandbox("e2b", config(memory_limit="1GB")).start()


async def test_unknown_template_is_a_configuration_error(make_sandbox: Any) -> None:
    with pytest.raises((ConfigurationError, GrainchainError)):
        await make_sandbox(config(image="no-such-template-7f3a"), provider="e2b")


# -- errors --------------------------------------------------------------------------------------------


async def test_wrong_api_key_is_an_authentication_error(make_sandbox: Any) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await make_sandbox(config(provider_config={"api_key": "e2b_wrong"}), provider="e2b")
    assert "e2b_wrong" not in str(caught.value)


async def test_rate_limit_is_retried_then_mapped(fake: FakeE2B, make_sandbox: Any) -> None:
    fake.inject(CREATE, method="POST", status=429, retry_after=0.0, times=1)
    before = fake.requests(CREATE, method="POST")
    sandbox = await make_sandbox(provider="e2b")  # the SDK's retry
    assert fake.requests(CREATE, method="POST") - before >= 2
    assert sandbox.status is SandboxStatus.running
    fake.inject(CREATE, method="POST", status=429, retry_after=0.0, times=20)
    with pytest.raises(RateLimitError) as caught:
        await make_sandbox(config(provider_config={"retries": 1}), provider="e2b")
    assert caught.value.retryable is True


async def test_unavailable_control_plane_is_retryable(fake: FakeE2B, make_sandbox: Any) -> None:
    fake.inject(CREATE, method="POST", status=503, times=20)
    with pytest.raises(RemoteError) as caught:
        await make_sandbox(config(provider_config={"retries": 1}), provider="e2b")
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("route", "method", "status"),
    [
        (r"^/files$", "GET", 503),  # a download: envd's HTTP API
        (r"^/files$", "POST", 502),  # an upload
        (r"/filesystem.Filesystem/Stat$", "POST", 503),  # a stat: envd's Connect-RPC service
        (r"/filesystem.Filesystem/ListDir$", "POST", 429),
    ],
)
async def test_idempotent_file_calls_are_retried_then_mapped(
    fake: FakeE2B, make_sandbox: Any, route: str, method: str, status: int
) -> None:
    """The SDK retries no envd call; grainchain tries an idempotent one again (provider_config `retries`
    times, with backoff) and, when every try failed, raises the mapped retryable error."""
    sandbox = await make_sandbox(config(provider_config={"retries": 2}), provider="e2b")
    await sandbox.upload_file("f", b"data")

    async def call() -> Any:
        if route == r"^/files$":
            return await (
                sandbox.download_file("f") if method == "GET" else sandbox.upload_file("f", b"data")
            )
        return await (sandbox.get_file_info("f") if "Stat" in route else sandbox.list_files("."))

    before = fake.requests(route, method=method)
    fake.inject(route, method=method, status=status, times=2)
    await call()  # the third try gets through
    assert fake.requests(route, method=method) - before == 3
    assert await sandbox.download_file("f") == b"data"

    before = fake.requests(route, method=method)
    fake.inject(route, method=method, status=status, times=10)
    with pytest.raises(RemoteError) as caught:
        await call()
    assert caught.value.retryable is True
    assert fake.requests(route, method=method) - before == 3, "1 try + provider_config retries=2"


async def test_a_missing_file_is_not_retried(fake: FakeE2B, make_sandbox: Any) -> None:
    sandbox = await make_sandbox(provider="e2b")
    before = fake.requests(r"^/files$", method="GET")
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.download_file("missing")
    assert fake.requests(r"^/files$", method="GET") - before == 1


async def test_a_create_whose_answer_is_lost_is_retried_without_a_second_sandbox(
    fake: FakeE2B, make_sandbox: Any
) -> None:
    """The first answer comes after the client's request timeout; the retry carries the same idempotency
    key, so the sandbox the late request makes is the one the retry got."""
    fake.inject(CREATE, method="POST", delay=2.0, times=1)
    sandbox = await make_sandbox(
        config(provider_config={"request_timeout": 1.0, "retries": 1}), provider="e2b"
    )
    assert fake.requests(CREATE, method="POST") >= 2
    await asyncio.sleep(1.5)  # the late request is done by now
    assert len(fake.sandboxes()) == 1, fake.sandboxes()
    assert (await sandbox.execute("echo ok")).stdout == "ok\n"


async def test_a_create_that_never_answers_is_a_backend_timeout_and_ends_by_itself(
    fake: FakeE2B, make_sandbox: Any
) -> None:
    import e2b

    fake.inject(CREATE, method="POST", delay=2.5, times=10)
    with pytest.raises(BackendTimeoutError) as caught:
        await make_sandbox(
            config(provider_config={"request_timeout": 0.5, "retries": 1, "lifetime": 60}), provider="e2b"
        )
    assert caught.value.retryable is True
    await asyncio.to_thread(fake.wait_faulted)  # a late request may still make one, with a lifetime
    for info in await e2b.AsyncSandbox.list(api_key=fake.api_key).next_items():
        assert (info.end_at - info.started_at).total_seconds() <= 61, "a leaked sandbox must end by itself"
        await e2b.AsyncSandbox.kill(info.sandbox_id, api_key=fake.api_key)


async def test_a_sandbox_gone_underneath_is_sandbox_not_found(fake: FakeE2B, make_sandbox: Any) -> None:
    import e2b

    sandbox = await make_sandbox(provider="e2b")
    for info in await e2b.AsyncSandbox.list(api_key=fake.api_key).next_items():
        await e2b.AsyncSandbox.kill(info.sandbox_id, api_key=fake.api_key)
    with pytest.raises((SandboxNotFoundError, RemoteError)):
        await sandbox.execute("true")


async def test_dropped_stream_is_a_connection_error_and_the_command_is_killed(
    fake: FakeE2B, make_sandbox: Any
) -> None:
    sandbox = await make_sandbox(provider="e2b")
    fake.inject(r"/process.Process/Start$", drop_stream=True, times=1)
    with pytest.raises(RemoteError):
        await sandbox.execute("echo first; sleep 1; touch after-drop; sleep 30", timeout=10)
    await asyncio.sleep(1.5)
    assert not await sandbox.file_exists("after-drop"), "the command ran on after its stream was lost"


def test_raw_output_is_taken_before_the_sdk_decodes_it_or_not_claimed() -> None:
    """The SDK hands over decoded text only; tee_raw_output swaps the handle's two decoders for ones that pass
    envd's chunks on as bytes. An SDK without those decoders is left alone (False: the output's bytes then
    say None, never a re-encoding of the text)."""
    import codecs

    from grainchain.providers.e2b import _sdk

    class Handle:
        def __init__(self) -> None:
            self._stdout_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._stderr_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    out: list[bytes] = []
    err: list[bytes] = []
    handle = Handle()
    assert _sdk.tee_raw_output(handle, out.append, err.append)  # type: ignore[arg-type]
    assert handle._stdout_decoder.decode(b"\xff\xc3") == ""  # the SDK gets no text: the collector decodes
    assert handle._stdout_decoder.decode(b"", final=True) == ""
    handle._stderr_decoder.decode(b"\x00x")
    assert (out, err) == ([b"\xff\xc3"], [b"\x00x"])
    assert not _sdk.tee_raw_output(object(), out.append, err.append)  # type: ignore[arg-type]
