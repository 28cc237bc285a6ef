"""The in-repo fake of Modal (tests/providers/modal_fake), driven by the unmodified `modal` SDK, blocking and
async: what the SDK does against it is what a grainchain adapter will see. Every test looks at state the
fake really keeps (processes, files on disk), not only at return values."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import modal
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from modal.exception import (
    AuthError,
    ImageBuildError,
    InvalidError,
    NotFoundError,
    SandboxFilesystemNotFoundError,
    SandboxTimeoutError,
)
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.task_command_router_grpc import TaskCommandRouterStub

from tests.providers._fakebox import pids_seeing
from tests.providers.modal_fake import FakeModal

pytestmark = pytest.mark.timeout(60)

APP = "grainchain-fake-tests"
CREATE = r"/SandboxCreateV2$"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeModal]:
    with FakeModal(root=tmp_path_factory.mktemp("modal")) as server:
        yield server


@pytest.fixture(autouse=True)
def modal_env(fake: FakeModal, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK pointed at the fake; faults and sandboxes a failing test leaves do not leak into the next."""
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)
    yield
    fake.clear_faults()
    for sandbox_id in fake.sandboxes():
        modal.Sandbox.from_id(sandbox_id).terminate()


@pytest.fixture
def app(fake: FakeModal) -> modal.App:
    return modal.App.lookup(APP, create_if_missing=True)


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes(fake: FakeModal, sandbox_id: str) -> list[int]:
    """The live processes of a sandbox, found the way the fake's terminate finds them."""
    return [pid for pid in pids_seeing(fake.sandbox_dir(sandbox_id) / "tmp", "/tmp") if pid_alive(pid)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------- commands


def test_exec_exit_codes_output_workdir_and_env(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, env={"FROM_CREATE": "yes"}, timeout=60)
    starts = fake.calls(r"/TaskExecStart$")
    p = sb.exec("bash", "-c", "echo out; echo err >&2; echo made > /etc/made-here; exit 7")
    assert (p.stdout.read(), p.stderr.read(), p.wait()) == ("out\n", "err\n", 7)
    assert (fake.sandbox_dir(sb.object_id) / "upper" / "etc" / "made-here").read_text() == "made\n"
    assert not Path("/etc/made-here").exists()  # the host's / is the read-only layer below

    p = sb.exec(
        "sh", "-c", 'pwd; echo "$FROM_CREATE $FROM_EXEC $HOME"; id -u', workdir="/tmp", env={"FROM_EXEC": "x"}
    )
    assert p.stdout.read() == "/tmp\nyes x /root\n0\n"
    assert sb.exec("pwd").stdout.read() == "/\n"
    assert sb.exec("sh", "-c", "kill -9 $$").wait() == 128 + 9  # Modal reports the signal: 128 + N
    missing = sb.exec("no-such-command")
    assert missing.wait() == 127
    assert "No such file or directory" in missing.stderr.read()
    with pytest.raises(InvalidError, match="/no/such/dir"):
        sb.exec("pwd", workdir="/no/such/dir")
    quiet = sb.exec("sh", "-c", "echo hidden; echo also >&2", stdout=modal.stream_type.StreamType.DEVNULL)
    assert (quiet.stderr.read(), quiet.wait()) == ("also\n", 0)
    assert fake.calls(r"/TaskExecStart$") == starts + 7


async def test_async_exec_streams_stdout_line_by_line(fake: FakeModal) -> None:
    app = await modal.App.lookup.aio(APP, create_if_missing=True)
    sb = await modal.Sandbox.create.aio(app=app, timeout=60)
    p = await sb.exec.aio("sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done")
    arrivals = []
    async for line in p.stdout:
        arrivals.append((line, time.monotonic()))
    assert [line for line, _ in arrivals] == ["line1\n", "line2\n", "line3\n"]
    assert arrivals[2][1] - arrivals[0][1] > 0.4  # as they came, not all at the end
    assert await p.wait.aio() == 0
    await sb.terminate.aio()


def test_stdin_reaches_the_command(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, timeout=60)
    p = sb.exec("sh", "-c", "cat > /tmp/got; wc -c < /tmp/got")
    p.stdin.write(b"hello \x00 world")
    p.stdin.drain()
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.stdout.read().strip() == "13"
    assert (fake.sandbox_dir(sb.object_id) / "tmp" / "got").read_bytes() == b"hello \x00 world"


def test_exec_timeout_kills_the_command(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, timeout=60)
    started = time.monotonic()
    p = sb.exec("sh", "-c", "echo $$ > /tmp/pid; exec sleep 30", timeout=1)
    # Modal kills the command at the deadline (SIGKILL: 137); the SDK's own deadline may answer first (-1)
    assert p.wait() in (137, -1)
    assert time.monotonic() - started < 5
    pid = int((fake.sandbox_dir(sb.object_id) / "tmp" / "pid").read_text())
    wait_until(lambda: not pid_alive(pid))


# ---------------------------------------------------------------------------------------------- files


def test_files_round_trip_binary_and_metadata(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, timeout=60)
    data = os.urandom(3 * 2**20)
    sb.filesystem.write_bytes(data, "/root/work/big.bin")
    assert (fake.sandbox_dir(sb.object_id) / "upper" / "root" / "work" / "big.bin").read_bytes() == data
    assert sb.filesystem.read_bytes("/root/work/big.bin") == data

    sb.filesystem.make_directory("/root/work/sub/deeper")
    entries = {entry.name: entry for entry in sb.filesystem.list_files("/root/work")}
    assert sorted(entries) == ["big.bin", "sub"]
    assert (entries["big.bin"].type.value, entries["big.bin"].size) == ("file", len(data))
    assert (entries["sub"].type.value, entries["sub"].owner) == ("directory", "root")
    info = sb.filesystem.stat("/root/work/big.bin")
    assert (info.size, info.permissions, info.path) == (len(data), "0644", "/root/work/big.bin")

    sb.filesystem.remove("/root/work/big.bin")
    assert not (fake.sandbox_dir(sb.object_id) / "upper" / "root" / "work" / "big.bin").exists()
    for call in (
        lambda: sb.filesystem.read_bytes("/root/work/big.bin"),
        lambda: sb.filesystem.stat("/nope"),
        lambda: sb.filesystem.list_files("/nope"),
        lambda: sb.filesystem.remove("/nope"),
    ):
        with pytest.raises(SandboxFilesystemNotFoundError):
            call()
    assert sb.exec("test", "-d", "/root/work/sub/deeper").wait() == 0


def test_snapshot_filesystem_then_create_from_the_image(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, timeout=60)
    sb.exec("sh", "-c", "echo kept > /root/kept; echo tmp > /tmp/t; rm /etc/debian_version").wait()
    image = sb.snapshot_filesystem()
    sb.exec("rm", "/root/kept").wait()  # (the image is a copy)
    assert (fake.root / "images" / image.object_id / "upper" / "root" / "kept").exists()

    again = modal.Sandbox.create(app=app, image=modal.Image.from_id(image.object_id), timeout=60)
    p = again.exec("sh", "-c", "cat /root/kept /tmp/t; test -e /etc/debian_version || echo deleted")
    assert p.stdout.read() == "kept\ntmp\ndeleted\n"
    assert Path("/etc/debian_version").exists()


# ---------------------------------------------------------------------------------------------- lifecycle


def test_tags_list_and_from_id(fake: FakeModal, app: modal.App) -> None:
    first = modal.Sandbox.create(app=app, tags={"suite": "fake", "n": "1"}, timeout=60)
    second = modal.Sandbox.create(app=app, tags={"suite": "fake", "n": "2"}, timeout=60, cpu=0.5, memory=256)
    assert fake.tags() == {
        first.object_id: {"suite": "fake", "n": "1"},
        second.object_id: {"suite": "fake", "n": "2"},
    }
    listed = [sb.object_id for sb in modal.Sandbox.list(app_id=app.app_id, tags={"suite": "fake"})]
    assert listed == [second.object_id, first.object_id]  # newest first
    assert [sb.object_id for sb in modal.Sandbox.list(app_id=app.app_id, tags={"n": "1"})] == [
        first.object_id
    ]

    second.set_tags({"suite": "other"})
    assert fake.tags()[second.object_id] == {"suite": "other"}
    found = modal.Sandbox.from_id(second.object_id)
    assert found.get_tags() == {"suite": "other"}
    assert found.exec("echo", "same").stdout.read() == "same\n"
    assert found.poll() is None
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_id("sb-" + "0" * 26)


def test_terminate_ends_every_process(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "300", app=app, timeout=60)
    sb.exec("sh", "-c", "setsid sleep 300 & sleep 300 & echo started").wait()
    wait_until(lambda: len(processes(fake, sb.object_id)) >= 3)
    pids = processes(fake, sb.object_id)
    sandbox_dir = fake.sandbox_dir(sb.object_id)
    sb.terminate()
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not sandbox_dir.exists()
    assert sb.object_id not in fake.sandboxes()
    sb.wait(raise_on_termination=False)
    assert sb.returncode == 137
    with pytest.raises(NotFoundError):
        sb.exec("true").wait()


async def test_timeout_and_entrypoint_end_the_sandbox(fake: FakeModal) -> None:
    app = await modal.App.lookup.aio(APP, create_if_missing=True)
    slow = await modal.Sandbox.create.aio("sh", "-c", "echo $$ > /tmp/pid; exec sleep 30", app=app, timeout=1)
    wait_until(lambda: (fake.sandbox_dir(slow.object_id) / "tmp" / "pid").exists())
    pid = int((fake.sandbox_dir(slow.object_id) / "tmp" / "pid").read_text())
    with pytest.raises(SandboxTimeoutError):
        await slow.wait.aio()
    assert slow.returncode == 124
    assert not pid_alive(pid)

    done = await modal.Sandbox.create.aio("sh", "-c", "echo hi; exit 3", app=app, timeout=60)
    assert await done.stdout.read.aio() == "hi\n"
    await done.wait.aio()
    assert done.returncode == 3
    assert done.object_id not in fake.sandboxes()


# ---------------------------------------------------------------------------------------------- network


class Listener:
    """A TCP server on the host's loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


CONNECT = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)"


def test_network_blocked_or_allowed(fake: FakeModal, app: modal.App) -> None:
    listener = Listener()
    try:
        open_box = modal.Sandbox.create(app=app, timeout=60)
        assert open_box.exec("python3", "-c", CONNECT, str(listener.port)).wait() == 0
        assert listener.accepted == 1
        blocked = modal.Sandbox.create(app=app, timeout=60, block_network=True)
        assert blocked.exec("python3", "-c", CONNECT, str(listener.port)).wait() == 1
        elsewhere = modal.Sandbox.create(app=app, timeout=60, outbound_cidr_allowlist=["10.0.0.0/8"])
        assert elsewhere.exec("python3", "-c", CONNECT, str(listener.port)).wait() == 1
        loopback = modal.Sandbox.create(app=app, timeout=60, outbound_cidr_allowlist=["127.0.0.0/8"])
        assert loopback.exec("python3", "-c", CONNECT, str(listener.port)).wait() == 0
        assert listener.accepted == 2
    finally:
        listener.sock.close()


def test_tunnel_reaches_a_server_in_the_sandbox(fake: FakeModal, app: modal.App) -> None:
    port = free_port()
    sb = modal.Sandbox.create(app=app, timeout=60, unencrypted_ports=[port])
    sb.exec("sh", "-c", "echo served > /tmp/page.txt")
    sb.exec("python3", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", "/tmp")
    tunnel = sb.tunnels()[port]
    url = f"http://{tunnel.unencrypted_host}:{tunnel.unencrypted_port}/page.txt"

    def fetch() -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                body: bytes = answer.read()
                return body
        except OSError:
            return None

    wait_until(lambda: fetch() == b"served\n", timeout=10)


# ---------------------------------------------------------------------------------------------- faults


def test_unavailable_is_retried_and_other_faults_surface(fake: FakeModal, app: modal.App) -> None:
    sb = modal.Sandbox.create(app=app, timeout=60, tags={"k": "v"})
    calls = fake.calls(r"/SandboxTagsGetV2$"), fake.calls(r"/TaskExecStart$")
    fake.inject(r"/SandboxTagsGetV2$", status=Status.UNAVAILABLE, times=2)
    assert sb.get_tags() == {"k": "v"}
    assert fake.calls(r"/SandboxTagsGetV2$") == calls[0] + 3

    fake.inject(r"/TaskExecStart$", status=Status.UNAVAILABLE)
    assert sb.exec("sh", "-c", "echo once >> /tmp/runs").wait() == 0
    assert fake.calls(r"/TaskExecStart$") == calls[1] + 2
    assert (fake.sandbox_dir(sb.object_id) / "tmp" / "runs").read_text() == "once\n"  # one process ran

    before = len(fake.sandboxes())
    fake.inject(CREATE, status=Status.UNAUTHENTICATED, message="token revoked")
    with pytest.raises(AuthError, match="token revoked"):
        modal.Sandbox.create(app=app, timeout=60)
    assert len(fake.sandboxes()) == before

    fake.inject(r"/SandboxWaitV2$", status=Status.NOT_FOUND, message="gone")
    with pytest.raises(NotFoundError, match="gone"):
        modal.Sandbox.from_id(sb.object_id)


async def test_delayed_create_and_wait_faulted(fake: FakeModal) -> None:
    app = await modal.App.lookup.aio(APP, create_if_missing=True)
    fake.inject(CREATE, delay=0.5)
    started = time.monotonic()
    sb = await modal.Sandbox.create.aio(app=app, timeout=60)
    assert time.monotonic() - started >= 0.5
    fake.wait_faulted()
    assert fake.sandboxes() == [sb.object_id]


async def test_wrong_token_and_foreign_jwt_are_rejected(fake: FakeModal, app: modal.App) -> None:
    client = await modal.Client.from_credentials.aio("ak-wrong", "as-wrong")
    calls = fake.calls(".")
    with pytest.raises(AuthError):
        await modal.App.lookup.aio(APP, client=client)
    assert fake.calls(".") > calls

    sb = await modal.Sandbox.create.aio(app=app, timeout=60)
    other = await modal.Sandbox.create.aio(app=app, timeout=60)
    channel = Channel("127.0.0.1", fake.port)
    try:
        stub = TaskCommandRouterStub(channel)
        start = sr_pb2.TaskExecStartRequest(
            task_id=await sb._get_task_id.aio(), exec_id="x", command_args=["touch", "/tmp/forged"]
        )
        for token in ("not-a-jwt", fake.tokens.jwt({"task_id": await other._get_task_id.aio()})):
            with pytest.raises(GRPCError) as refused:
                await stub.TaskExecStart(start, metadata={"authorization": f"Bearer {token}"})
            assert refused.value.status == Status.UNAUTHENTICATED
    finally:
        channel.close()
    assert not (fake.sandbox_dir(sb.object_id) / "tmp" / "forged").exists()


def test_stop_kills_everything_and_removes_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    own = FakeModal()
    with own:
        for name, value in own.env.items():
            monkeypatch.setenv(name, value)
        client = modal.Client.from_credentials(own.tokens.token_id, own.tokens.token_secret)
        app = modal.App.lookup(APP, create_if_missing=True, client=client)
        image = modal.Image.debian_slim()  # (the default image is hydrated by the module's fake)
        sb = modal.Sandbox.create("sleep", "300", app=app, image=image, timeout=60, client=client)
        sb.exec("sh", "-c", "setsid sleep 300 &").wait()
        wait_until(lambda: len(processes(own, sb.object_id)) >= 2)
        pids = processes(own, sb.object_id)
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not own.root.exists()


# ---------------------------------------------------------------------------------------------- images

DOCKERFILE = """\
# built by the fake: every line below really runs (or applies) in a bubblewrap overlay
FROM python:3.11-slim
RUN echo built > /built.txt && \\
    echo $HOME >> /built.txt
ENV GREETING=hi
WORKDIR /app
COPY hello.txt /app/hello.txt
"""


def dockerfile_context(tmp_path: Path, dockerfile: str = DOCKERFILE) -> Path:
    (tmp_path / "hello.txt").write_text("hello from the context\n")
    (tmp_path / "not-copied.txt").write_text("the SDK uploads only what COPY names\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path / "Dockerfile"


def test_dockerfile_is_built_and_cached(fake: FakeModal, app: modal.App, tmp_path: Path) -> None:
    dockerfile = dockerfile_context(tmp_path)
    builds = len(fake.builds())
    image = modal.Image.from_dockerfile(dockerfile, context_dir=tmp_path)
    sb = modal.Sandbox.create(app=app, image=image, timeout=60)
    p = sb.exec("sh", "-c", 'cat /built.txt /app/hello.txt; echo "$GREETING"; pwd')
    assert p.stdout.read() == "built\n/root\nhello from the context\nhi\n/app\n"
    assert sb.exec("test", "-e", "/app/not-copied.txt").wait() == 1
    assert not Path("/built.txt").exists()  # (built in an overlay: the host is the read-only layer)
    assert sb.exec("pwd", workdir="/tmp").stdout.read() == "/tmp\n"
    # the sandbox's own workdir wins over the image's (the adapter passes /workspace)
    elsewhere = modal.Sandbox.create(app=app, image=image, timeout=60, workdir="/workspace")
    assert elsewhere.exec("pwd").stdout.read() == "/workspace\n"
    assert fake.definitions()[elsewhere.object_id].workdir == "/workspace"

    built = fake.builds()[builds:]
    assert built  # (the Dockerfile, and the SDK's layer on top of it)
    files = [fake.root / "images" / image_id / "upper" for image_id in built]
    assert any((upper / "built.txt").read_text() == "built\n/root\n" for upper in files if upper.exists())

    # a layer on top (FROM base) sees the Dockerfile's files, env and workdir, and adds its own
    layered = image.run_commands("cp hello.txt copied.txt; echo $GREETING-again > /second.txt").env(
        {"SECOND": "two words"}
    )
    top = modal.Sandbox.create(app=app, image=layered, timeout=60)
    p = top.exec("sh", "-c", 'cat /built.txt /second.txt /app/copied.txt; echo "$GREETING $SECOND"; pwd')
    assert p.stdout.read() == "built\n/root\nhi-again\nhello from the context\nhi two words\n/app\n"

    # the same definition (a new Image object, the same context) is the same image: not built again
    gets, builds = fake.calls(r"/ImageGetOrCreate$"), len(fake.builds())
    again = modal.Image.from_dockerfile(dockerfile, context_dir=tmp_path)
    sb_again = modal.Sandbox.create(app=app, image=again, timeout=60)
    assert again.object_id == image.object_id
    assert fake.calls(r"/ImageGetOrCreate$") > gets
    assert len(fake.builds()) == builds
    assert sb_again.exec("cat", "/built.txt").stdout.read() == "built\n/root\n"

    # another context is another image, built anew
    (tmp_path / "hello.txt").write_text("changed\n")
    changed = modal.Image.from_dockerfile(dockerfile, context_dir=tmp_path)
    sb_changed = modal.Sandbox.create(app=app, image=changed, timeout=60)
    assert sb_changed.exec("cat", "/app/hello.txt").stdout.read() == "changed\n"
    assert len(fake.builds()) > builds


async def test_async_build_failure_pip_and_layers(fake: FakeModal, tmp_path: Path) -> None:
    app = await modal.App.lookup.aio(APP, create_if_missing=True)
    builds = len(fake.builds())
    failing = modal.Image.from_registry("python:3.11-slim").run_commands(
        "echo going to fail; echo on stderr >&2; exit 3"
    )
    with pytest.raises(ImageBuildError, match=r"(?s)going to fail\non stderr\n.*exit 3.*code 3"):
        await modal.Sandbox.create.aio(app=app, image=failing, timeout=60)
    assert len(fake.builds()) == builds + 2  # (the registry image, then the failing layer)
    with pytest.raises(ImageBuildError):  # a failed build is tried again, not cached
        await modal.Sandbox.create.aio(app=app, image=failing, timeout=60)
    assert len(fake.builds()) == builds + 3

    # pip install is a no-op (no network); a normal RUN line next to it does run
    image = (
        modal.Image.from_registry("python:3.11-slim")
        .pip_install(["numpy"])
        .run_commands("echo ran > /ran.txt")
        .workdir("/srv")
        .env({"MODE": "fake"})
    )
    sb = await modal.Sandbox.create.aio(app=app, image=image, timeout=60)
    p = await sb.exec.aio("sh", "-c", 'cat /ran.txt; echo "$MODE"; pwd')
    assert await p.stdout.read.aio() == "ran\nfake\n/srv\n"

    # a Dockerfile FROM an image the fake built (by its id, as a base image of the definition)
    dockerfile = dockerfile_context(tmp_path)
    base = modal.Image.from_dockerfile(dockerfile, context_dir=tmp_path)
    on_top = base.dockerfile_commands(
        [
            "RUN cat /app/hello.txt /built.txt > /both.txt",
            "ENV GREETING=bye PATH=/opt/tools:$PATH",
            "RUN mkdir -p /opt/tools && printf '#!/bin/sh\\necho tool ran\\n' > /opt/tools/tool",
            "RUN chmod +x /opt/tools/tool",
        ]
    )
    top = await modal.Sandbox.create.aio(app=app, image=on_top, timeout=60)
    p = await top.exec.aio("sh", "-c", 'cat /both.txt; echo "$GREETING"; tool; echo "$PATH"')
    assert await p.stdout.read.aio() == (
        "hello from the context\nbuilt\n/root\nbye\ntool ran\n/opt/tools:/usr/local/sbin:/usr/local/bin:"
        "/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    await top.terminate.aio()
    await sb.terminate.aio()
