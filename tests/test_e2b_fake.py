"""The in-repo fake of E2B (tests/providers/e2b_fake), driven by the unmodified `e2b` SDK, blocking and
async: what the SDK does against it is what a grainchain adapter will see. Every test looks at state the
fake really keeps (processes, files on disk, timers), not only at return values."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import AsyncSandbox, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import CommandExitException
from e2b.sandbox.filesystem.filesystem import FileType

from tests.providers.e2b_fake import SNAPSHOT_LIMITATION, FakeE2B

pytestmark = pytest.mark.timeout(60)

START = r"^/process\.Process/Start$"
GET_SANDBOX = r"^/sandboxes/[^/]+$"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeE2B]:
    with FakeE2B(root=tmp_path_factory.mktemp("e2b")) as server:
        yield server


@pytest.fixture(autouse=True)
def e2b_env(fake: FakeE2B, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK pointed at the fake, as a user points it at a self-hosted E2B; faults and sandboxes left by a
    failing test do not leak into the next one."""
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    yield
    fake.clear_faults()
    for sandbox_id in fake.sandboxes():
        Sandbox.kill(sandbox_id)


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- lifecycle


async def test_create_list_by_metadata_info_and_kill(fake: FakeE2B) -> None:
    first = await AsyncSandbox.create(metadata={"suite": "fake", "n": "1"}, envs={"FROM_CREATE": "yes"})
    second = await AsyncSandbox.create(metadata={"suite": "fake", "n": "2"})
    assert sorted(fake.sandboxes()) == sorted([first.sandbox_id, second.sandbox_id])

    found = await AsyncSandbox.list(query=SandboxQuery(metadata={"n": "1"})).next_items()
    assert [s.sandbox_id for s in found] == [first.sandbox_id]
    both = await AsyncSandbox.list(query=SandboxQuery(metadata={"suite": "fake"})).next_items()
    assert {s.sandbox_id for s in both} == {first.sandbox_id, second.sandbox_id}
    paginator = AsyncSandbox.list(limit=1)
    pages = [await paginator.next_items()]
    while paginator.has_next:
        pages.append(await paginator.next_items())
    assert [len(page) for page in pages] == [1, 1]

    info = await first.get_info()
    assert (info.sandbox_id, info.template_id, info.state) == (first.sandbox_id, "base", SandboxState.RUNNING)
    assert info.metadata == {"suite": "fake", "n": "1"}
    assert 295 <= (info.end_at - info.started_at).total_seconds() <= 301  # the API's default timeout
    assert (await first.commands.run("echo $FROM_CREATE")).stdout == "yes\n"

    home = fake.sandbox_dir(first.sandbox_id) / "home" / "user"
    assert home.is_dir()
    assert await first.kill() is True
    assert not home.exists()  # a killed sandbox's directory is gone
    assert await AsyncSandbox.kill(first.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.get_info(first.sandbox_id)
    assert await first.is_running() is False
    assert fake.sandboxes() == [second.sandbox_id]
    await second.kill()


def test_same_idempotency_key_gives_the_same_sandbox(fake: FakeE2B) -> None:
    first = Sandbox.create(idempotency_key="grainchain-key-1")
    again = Sandbox.create(idempotency_key="grainchain-key-1")
    other = Sandbox.create(idempotency_key="grainchain-key-2")
    assert again.sandbox_id == first.sandbox_id != other.sandbox_id
    assert len(fake.sandboxes()) == 2


def test_wrong_or_missing_api_key_is_401(fake: FakeE2B) -> None:
    with pytest.raises(AuthenticationException, match="401"):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException, match="401"):
        Sandbox.list(api_key="e2b_wrong").next_items()
    assert fake.sandboxes() == []


def test_timeout_kills_or_pauses_as_the_lifecycle_says(fake: FakeE2B) -> None:
    killed = Sandbox.create(timeout=1)
    paused = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause"})
    woken = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause", "auto_resume": True})
    extended = Sandbox.create(timeout=1)
    extended.set_timeout(30)
    states = {"paused": paused.sandbox_id, "woken": woken.sandbox_id}

    def ended() -> bool:
        return killed.sandbox_id not in fake.sandboxes() and all(
            Sandbox.get_info(i).state == SandboxState.PAUSED for i in states.values()
        )

    wait_until(ended, 5)
    assert extended.is_running()
    lifecycle = Sandbox.get_info(paused.sandbox_id).lifecycle
    assert lifecycle is not None
    assert lifecycle["on_timeout"] == "pause"
    assert Sandbox.connect(paused.sandbox_id).commands.run("echo back").stdout == "back\n"
    assert woken.commands.run("echo woken").stdout == "woken\n"  # traffic resumes it
    assert Sandbox.get_info(woken.sandbox_id).state == SandboxState.RUNNING
    assert paused.pause() is True
    with pytest.raises(SandboxNotRunningException):  # without auto-resume, a paused sandbox is unreachable
        paused.commands.run("echo no")


# ----------------------------------------------------------------------------------------------- commands


def test_commands_output_exit_codes_env_and_cwd(fake: FakeE2B) -> None:
    sandbox = Sandbox.create()
    result = sandbox.commands.run("echo out; echo err >&2; pwd; echo $HOME:$USER")
    assert (result.stdout, result.stderr, result.exit_code) == (
        "out\n/home/user\n/home/user:user\n",
        "err\n",
        0,
    )

    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("echo partial; echo bad >&2; exit 3")
    assert (failed.value.exit_code, failed.value.stdout, failed.value.stderr) == (3, "partial\n", "bad\n")
    assert failed.value.error == "exit status 3"

    with pytest.raises(CommandExitException) as killed:
        sandbox.commands.run("kill -9 $$")
    assert (killed.value.exit_code, killed.value.error) == (-1, "signal: killed")  # envd's end event

    sandbox.files.make_dir("sub")
    here = sandbox.commands.run("pwd; echo $X; echo made > f", cwd="sub", envs={"X": "call"})
    assert here.stdout == "/home/user/sub\ncall\n"
    assert (fake.sandbox_dir(sandbox.sandbox_id) / "home/user/sub/f").read_text() == "made\n"
    with pytest.raises(SandboxException, match="does not exist"):
        sandbox.commands.run("true", cwd="/home/user/nowhere")

    # the rest of the machine is there, read-only; /tmp is the sandbox's own
    assert sandbox.commands.run("grep CapEff /proc/self/status").stdout.split() == ["CapEff:", "0" * 16]
    denied = sandbox.commands.run("touch /etc/e2b-fake 2>&1 || echo refused; ls /tmp; echo t > /tmp/t")
    assert "Read-only file system" in denied.stdout
    assert denied.stdout.endswith("refused\n")
    assert not Path("/etc/e2b-fake").exists()
    assert (fake.sandbox_dir(sandbox.sandbox_id) / "tmp/t").read_text() == "t\n"


async def test_output_streams_as_it_comes(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    seen: list[tuple[float, str]] = []
    result = await sandbox.commands.run(
        "echo one; sleep 0.6; echo two >&2", on_stdout=lambda s: seen.append((time.monotonic(), s))
    )
    ended = time.monotonic()
    assert result.stdout == "one\n"
    assert result.stderr == "two\n"
    assert seen[0][1] == "one\n"
    assert ended - seen[0][0] > 0.4  # it came while the command was still sleeping


async def test_command_timeout_kills_the_command(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    started = time.monotonic()
    # envd runs a command under the request's deadline and kills it then; the async SDK sees that end
    with pytest.raises(CommandExitException) as ended:
        await sandbox.commands.run("sleep 10", timeout=0.5)
    assert time.monotonic() - started < 3
    assert (ended.value.exit_code, ended.value.error) == (-1, "signal: killed")
    assert await sandbox.commands.list() == []


def test_command_timeout_blocking_sdk(fake: FakeE2B) -> None:
    sandbox = Sandbox.create()
    with pytest.raises(TimeoutException):  # the blocking SDK's own deadline fires first
        sandbox.commands.run("sleep 10", timeout=0.5)
    wait_until(lambda: sandbox.commands.list() == [], 3)  # and envd killed it all the same


async def test_background_command_list_connect_stdin_and_kill(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    handle = await sandbox.commands.run("sleep 30", background=True)
    assert pid_alive(handle.pid)  # pids are real: the host sees the same process
    processes = await sandbox.commands.list()
    assert [(p.pid, p.cmd, p.args[-1]) for p in processes] == [(handle.pid, "/bin/bash", "sleep 30")]

    reader = await sandbox.commands.run("read line; echo got:$line", background=True, stdin=True)
    other = await sandbox.commands.connect(reader.pid)
    await sandbox.commands.send_stdin(reader.pid, "hello\n")
    assert (await other.wait()).stdout == "got:hello\n"
    assert (await reader.wait()).stdout == "got:hello\n"

    assert await handle.kill() is True
    with pytest.raises(CommandExitException) as killed:
        await handle.wait()
    assert killed.value.exit_code == -1
    assert not pid_alive(handle.pid)
    assert await sandbox.commands.list() == []
    assert await sandbox.commands.kill(handle.pid) is False  # envd: not found


async def test_kill_ends_every_process_of_the_sandbox(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    await sandbox.commands.run("setsid nohup sleep 60 >/dev/null 2>&1 & echo $! > /tmp/daemon")
    daemon = int((await sandbox.files.read("/tmp/daemon")).strip())
    assert pid_alive(daemon)
    handle = await sandbox.commands.run("sleep 60", background=True)
    await sandbox.kill()
    wait_until(lambda: not pid_alive(daemon) and not pid_alive(handle.pid), 3)
    with pytest.raises((SandboxNotRunningException, SandboxUnreachableException)):
        await handle.wait()


# -------------------------------------------------------------------------------------------------- files


async def test_files_are_exact_bytes(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    payload = os.urandom(1024 * 1024)
    info = await sandbox.files.write("data/random.bin", payload)
    assert (info.path, info.name, info.type) == ("/home/user/data/random.bin", "random.bin", FileType.FILE)
    assert bytes(await sandbox.files.read("data/random.bin", format="bytes")) == payload
    assert (fake.sandbox_dir(sandbox.sandbox_id) / "home/user/data/random.bin").read_bytes() == payload
    check = await sandbox.commands.run("sha256sum data/random.bin | cut -d' ' -f1")
    assert check.stdout.strip() == __import__("hashlib").sha256(payload).hexdigest()

    invalid = b"ok \xff\xfe\x80 end"
    await sandbox.files.write("/tmp/invalid.txt", invalid)
    assert bytes(await sandbox.files.read("/tmp/invalid.txt", format="bytes")) == invalid
    assert await sandbox.files.read("/tmp/invalid.txt") == invalid.decode("utf-8", "replace")
    streamed = b"".join(
        [chunk async for chunk in await sandbox.files.read("data/random.bin", format="stream")]
    )
    assert streamed == payload

    many = await sandbox.files.write_files(
        [{"path": "a.txt", "data": "A"}, {"path": "/tmp/b.txt", "data": b"B"}]
    )
    assert [w.path for w in many] == ["/home/user/a.txt", "/tmp/b.txt"]
    assert (await sandbox.commands.run("cat a.txt /tmp/b.txt")).stdout == "AB"


def test_files_blocking_sdk_and_octet_stream(fake: FakeE2B, tmp_path: Path) -> None:
    sandbox = Sandbox.create()
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 64)
    with source.open("rb") as handle:  # a file object goes up as application/octet-stream
        sandbox.files.write("up.bin", handle)
    assert bytes(sandbox.files.read("up.bin", format="bytes")) == source.read_bytes()
    sandbox.files.write("meta.txt", "m", metadata={"owner": "tests"})
    assert sandbox.files.get_info("meta.txt").metadata == {"owner": "tests"}
    with pytest.raises(FileNotFoundException):
        sandbox.files.read("missing.txt")


def test_list_stat_mkdir_remove_exists(fake: FakeE2B) -> None:
    sandbox = Sandbox.create()
    assert sandbox.files.make_dir("proj/src") is True
    assert sandbox.files.make_dir("proj/src") is False
    sandbox.files.write("proj/src/main.py", "print(1)\n")
    sandbox.files.write("proj/README", "r")
    sandbox.commands.run("ln -s /home/user/proj/src/main.py proj/link && chmod 600 proj/README")

    top = sandbox.files.list("proj")
    assert [(e.name, e.type) for e in top] == [
        ("src", FileType.DIR),
        ("link", FileType.SYMLINK),
        ("README", FileType.FILE),
    ]
    deep = sandbox.files.list("/home/user/proj", depth=2)
    assert "/home/user/proj/src/main.py" in [e.path for e in deep]

    main = sandbox.files.get_info("proj/src/main.py")
    assert (main.size, main.mode, main.permissions, main.type) == (9, 0o644, "-rw-r--r--", FileType.FILE)
    assert abs(main.modified_time.timestamp() - time.time()) < 60
    readme = sandbox.files.get_info("proj/README")
    assert (readme.mode, readme.permissions) == (0o600, "-rw-------")
    link = sandbox.files.get_info("proj/link")
    assert (link.type, link.symlink_target) == (FileType.SYMLINK, "/home/user/proj/src/main.py")
    assert sandbox.files.read("proj/link") == "print(1)\n"  # followed as the sandbox would
    assert sandbox.files.get_info("proj").type == FileType.DIR

    assert sandbox.files.exists("proj/README") is True
    sandbox.files.remove("proj/README")
    assert sandbox.files.exists("proj/README") is False
    sandbox.files.remove("proj")
    assert sandbox.files.exists("proj") is False
    assert not (fake.sandbox_dir(sandbox.sandbox_id) / "home/user/proj").exists()
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("proj")
    moved = sandbox.files.rename(sandbox.files.write("x.txt", "x").path, "/tmp/y.txt")
    assert moved.path == "/tmp/y.txt"
    assert sandbox.files.read("/tmp/y.txt") == "x"

    # the host outside /home/user and /tmp: readable, not writable
    assert "hostname" in [e.name for e in sandbox.files.list("/etc")]
    with pytest.raises(SandboxException, match="read-only file system"):
        sandbox.files.write("/etc/e2b-fake.txt", "no")
    with pytest.raises(SandboxException, match="read-only file system"):
        sandbox.files.make_dir("/usr/e2b-fake")
    assert not Path("/etc/e2b-fake.txt").exists()
    assert not Path("/usr/e2b-fake").exists()


# ---------------------------------------------------------------------------------- pause and snapshots


async def test_pause_stops_processes_and_connect_resumes_them(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    counter = fake.sandbox_dir(sandbox.sandbox_id) / "tmp/count"
    await sandbox.commands.run(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; mv /tmp/c /tmp/count; sleep 0.05; done",
        background=True,
    )
    wait_until(lambda: counter.exists() and counter.read_text().strip() not in ("", "1"))

    assert await sandbox.pause() is True
    assert (await AsyncSandbox.get_info(sandbox.sandbox_id)).state == SandboxState.PAUSED
    paused = await AsyncSandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    running = await AsyncSandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert [s.sandbox_id for s in paused] == [sandbox.sandbox_id]
    assert sandbox.sandbox_id not in [s.sandbox_id for s in running]
    assert await sandbox.is_running() is False
    frozen = counter.read_text()
    await asyncio.sleep(0.4)
    assert counter.read_text() == frozen  # stopped while paused
    assert await sandbox.pause() is False  # already paused

    resumed = await AsyncSandbox.connect(sandbox.sandbox_id)
    assert (await resumed.get_info()).state == SandboxState.RUNNING
    await asyncio.sleep(0.4)
    assert int(counter.read_text()) > int(frozen)  # the same process goes on counting
    [counting] = await resumed.commands.list()
    await resumed.commands.kill(counting.pid)


async def test_filesystem_pause_keeps_files_not_processes(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    await sandbox.files.write("kept.txt", "kept")
    handle = await sandbox.commands.run("sleep 60", background=True)
    await sandbox.pause(mode="filesystem")
    assert not pid_alive(handle.pid)
    resumed = await sandbox.connect()
    assert await resumed.files.read("kept.txt") == "kept"
    assert await resumed.commands.list() == []


async def test_snapshot_create_list_delete_and_start_from_it(fake: FakeE2B) -> None:
    source = await AsyncSandbox.create()
    await source.files.write("state.txt", "from the snapshot")
    await source.commands.run("mkdir -p /tmp/cache && echo c > /tmp/cache/c")
    snapshot = await source.create_snapshot(name="grainchain-snap")
    assert snapshot.names == ["fake-team/grainchain-snap:default"]
    assert snapshot.snapshot_id in fake.snapshots()
    listed = await AsyncSandbox.list_snapshots().next_items()
    assert [s.snapshot_id for s in listed] == [snapshot.snapshot_id]
    assert [s.snapshot_id for s in await AsyncSandbox.list_snapshots(source.sandbox_id).next_items()] == [
        snapshot.snapshot_id
    ]
    assert await source.is_running()  # the source goes on

    await source.files.write("state.txt", "changed after")
    for ref in (snapshot.snapshot_id, "grainchain-snap"):
        started = await AsyncSandbox.create(ref)
        assert started.sandbox_id != source.sandbox_id
        assert await started.files.read("state.txt") == "from the snapshot"
        assert (await started.commands.run("cat /tmp/cache/c")).stdout == "c\n"
        assert (await started.get_info()).template_id == snapshot.snapshot_id
        await started.kill()

    assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id) is True
    assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id) is False
    assert fake.snapshots() == []
    with pytest.raises(SandboxException, match="404"):
        await AsyncSandbox.create(snapshot.snapshot_id)
    assert "files only" in SNAPSHOT_LIMITATION


# ------------------------------------------------------------------------------------------------- faults


def test_control_plane_faults_and_retries(fake: FakeE2B) -> None:
    fake.inject(r"^/v2/sandboxes$", status=429, retry_after=0, method="POST")
    sandbox = Sandbox.create()  # the SDK retries a 429 (Retry-After: 0)
    assert fake.requests(r"^/v2/sandboxes$", method="POST") >= 2
    before = fake.requests(GET_SANDBOX, method="GET")
    fake.inject(GET_SANDBOX, status=503, times=4, method="GET")
    with pytest.raises(ServiceBusyException):
        sandbox.get_info()
    assert fake.requests(GET_SANDBOX, method="GET") - before == 4  # the first try and 3 retries

    cases: list[tuple[int, type[Exception]]] = [
        (401, AuthenticationException),
        (404, SandboxNotFoundException),
        (429, RateLimitException),
        (500, SandboxException),
    ]
    for status, exception in cases:
        fake.inject(GET_SANDBOX, status=status, retry_after=0, times=4, method="GET")
        with pytest.raises(exception):
            sandbox.get_info()
        fake.clear_faults()
    assert sandbox.get_info().sandbox_id == sandbox.sandbox_id


def test_envd_faults_map_to_sdk_exceptions(fake: FakeE2B) -> None:
    sandbox = Sandbox.create()
    cases: list[tuple[int, type[Exception]]] = [
        (401, AuthenticationException),
        (429, RateLimitException),
        (500, SandboxException),
        (503, SandboxUnreachableException),  # an edge's 503: the sandbox answers its health probe
    ]
    for status, exception in cases:
        fake.inject(START, status=status)
        with pytest.raises(exception):
            sandbox.commands.run("echo unreachable")
    fake.inject(r"^/filesystem\.Filesystem/Stat$", status=404)
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("anything")
    fake.inject(r"^/files$", status=404, method="GET")
    with pytest.raises(NotFoundException):
        sandbox.files.read("anything")
    fake.inject(r"^/files$", status=429, retry_after=1, method="POST")
    with pytest.raises(RateLimitException):
        sandbox.files.write("anything", "x")
    assert sandbox.commands.run("echo fine").stdout == "fine\n"


async def test_delay_and_dropped_stream(fake: FakeE2B) -> None:
    sandbox = await AsyncSandbox.create()
    fake.inject(r"^/process\.Process/List$", delay=1.5)
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        await sandbox.commands.list(request_timeout=0.3)
    assert time.monotonic() - started < 1.2

    fake.inject(START, drop_stream=True)
    handle = await sandbox.commands.run("sleep 0.3; echo done > /tmp/done", background=True)
    with pytest.raises(SandboxUnreachableException):  # the start event came, then the connection ended
        await handle.wait()
    wait_until(lambda: (fake.sandbox_dir(sandbox.sandbox_id) / "tmp/done").exists(), 3)  # it ran on


def test_python_m_prints_the_environment_and_serves(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.providers.e2b_fake", "--root", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        env = dict(line.removeprefix("export ").strip().split("=", 1) for line in lines)
        assert set(env) == {"E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DEBUG"}
        sandbox = Sandbox.create(
            api_key=env["E2B_API_KEY"], api_url=env["E2B_API_URL"], sandbox_url=env["E2B_SANDBOX_URL"]
        )
        assert sandbox.commands.run("echo served").stdout == "served\n"
    finally:
        process.terminate()
        returncode = process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert returncode == 0  # SIGTERM: a clean stop


def test_no_internet_access_means_no_network(fake: FakeE2B) -> None:
    offline = Sandbox.create(allow_internet_access=False)
    assert offline.get_info().allow_internet_access is False
    interfaces = offline.commands.run("tail -n +3 /proc/net/dev | cut -d: -f1").stdout.split()
    assert interfaces == ["lo"]  # a network namespace of its own, with loopback only


async def test_fork_copies_files_into_new_sandboxes(fake: FakeE2B) -> None:
    source = await AsyncSandbox.create(metadata={"role": "source"})
    await source.files.write("forked.txt", "same")
    forks = await source.fork(count=2)
    ids = set()
    for child in forks:
        assert isinstance(child, AsyncSandbox)
        assert await child.files.read("forked.txt") == "same"
        ids.add(child.sandbox_id)
    assert len(ids | {source.sandbox_id}) == 3
    assert sorted(fake.sandboxes()) == sorted(ids | {source.sandbox_id})


def test_stop_ends_every_process_and_removes_its_directory() -> None:
    with FakeE2B() as own:
        root = own.root
        sandbox = Sandbox.create(api_key=own.api_key, api_url=own.url, sandbox_url=own.url)
        handle = sandbox.commands.run("sleep 60", background=True)
        assert pid_alive(handle.pid)
        assert root.is_dir()
    assert not pid_alive(handle.pid)
    assert not root.exists()
