"""Helpers of the attack tests: sandboxes opened as a user opens them, host-side probes that do not use
grainchain, the symlink swapper, the bounded fork bomb, docker checks and host clean-up."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _procs import alive, process_environments

from grainchain import SandboxConfig
from grainchain.sync import Sandbox

MARKER = "GRAINCHAIN_SANDBOX_ID"
BUSYBOX = "grainchain-test/busybox:latest"

_SYSCALLS = {
    "x86_64": {"renameat2": 316, "add_key": 248, "keyctl": 250, "unshare": 272, "mount": 165},
    "aarch64": {"renameat2": 276, "add_key": 217, "keyctl": 219, "unshare": 97, "mount": 40},
}


def syscall_numbers() -> dict[str, int]:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.fail(f"the attack scripts know no syscall numbers for {platform.machine()}")
    return numbers


def config(**provider_config: Any) -> SandboxConfig:
    return SandboxConfig(provider_config=provider_config)


def run(sandbox: Any, command: str, timeout: float = 60) -> Any:
    """Run a command that must succeed."""
    result = sandbox.execute(command, timeout=timeout)
    assert result.return_code == 0, (
        f"{command!r} failed ({result.return_code}): {result.stdout} {result.stderr}"
    )
    return result


def python_in(sandbox: Any, script: str, timeout: float = 60) -> str:
    """Run a Python script inside the sandbox (uploaded, then `python3 file`) and return its stdout."""
    sandbox.upload_file(".probe.py", script)
    return str(run(sandbox, "python3 .probe.py", timeout=timeout).stdout)


def host_pid_namespace() -> str:
    return os.readlink("/proc/self/ns/pid")


def require_isolated(sandbox: Any) -> None:
    """Fail loudly (never skip) when a sandbox meant to be isolated runs in the host's pid namespace: then
    bubblewrap namespaces are unavailable and every attack below would test the wrong thing."""
    inside = sandbox.execute("readlink /proc/self/ns/pid").stdout.strip()
    if not inside or inside == host_pid_namespace():
        pytest.fail(
            "bubblewrap namespaces are unavailable: the default local sandbox runs in the host's pid "
            f"namespace ({inside or 'unreadable'}); install bubblewrap and run as root"
        )


@contextmanager
def isolated_sandbox(cfg: SandboxConfig | None = None) -> Iterator[Any]:
    """A local sandbox with the given config (default: the defaults), checked to be namespaced."""
    with Sandbox("local", cfg) as sandbox:
        require_isolated(sandbox)
        yield sandbox


@contextmanager
def local_sandbox(isolation: str) -> Iterator[Any]:
    """A local sandbox in the given isolation mode; a namespaced one is checked to be namespaced."""
    with Sandbox("local", config(isolation=isolation)) as sandbox:
        if isolation != "none":
            require_isolated(sandbox)
        yield sandbox


# --- host-side process probes -------------------------------------------------------------------------------


def marked_pids(sandbox_id: str) -> list[int]:
    """Live host processes carrying the sandbox's marker GRAINCHAIN_SANDBOX_ID=<id>."""
    entry = f"{MARKER}={sandbox_id}".encode()
    return [pid for pid, environ in process_environments() if entry in environ and alive(pid)]


def sweep(find: Callable[[], set[int]], within: float = 10) -> int:
    """Kill (SIGKILL, from the host) every process find() returns until none is left; return how many were
    killed. A fork bomb may still fork while being swept, so sweep until two rounds find nothing."""
    killed = 0
    quiet_rounds = 0
    deadline = time.monotonic() + within
    while quiet_rounds < 2 and time.monotonic() < deadline:
        pids = find()
        quiet_rounds = 0 if pids else quiet_rounds + 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return killed


def host_can_spawn(within: float = 5) -> float | None:
    """Seconds the host took to run `true`, or None when it could not within `within` seconds."""
    started = time.monotonic()
    try:
        subprocess.run(["true"], check=True, timeout=within)
    except (OSError, subprocess.SubprocessError):
        return None
    return time.monotonic() - started


# --- the symlink swapper --------------------------------------------------------------------------------------

# Swaps the real directory `d` with the symlink `d_alt` (-> a host directory) with renameat2(RENAME_EXCHANGE)
# in a loop (spinning argv[2] seconds between swaps; 0: a tight loop), and keeps a file `victim` in the real
# directory (through a descriptor, so never through the symlink). Prints "swapping" once the first exchange
# worked; stops by itself after argv[1] seconds.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
RENAMEAT2, AT_FDCWD, RENAME_EXCHANGE = {renameat2}, -100, 2
real = os.open("d", os.O_RDONLY | os.O_DIRECTORY)
if libc.syscall(RENAMEAT2, AT_FDCWD, b"d", AT_FDCWD, b"d_alt", RENAME_EXCHANGE) != 0:
    print("renameat2 failed: errno", ctypes.get_errno(), flush=True)
    sys.exit(3)
print("swapping", flush=True)
end = time.monotonic() + float(sys.argv[1])
pause = float(sys.argv[2])
n = 0
while True:
    libc.syscall(RENAMEAT2, AT_FDCWD, b"d", AT_FDCWD, b"d_alt", RENAME_EXCHANGE)
    n += 1
    if pause:  # a busy wait: sleeps overshoot by the timer slack and vary with the load
        until = time.perf_counter() + pause
        while time.perf_counter() < until:
            pass
    if n % 8 == 0:
        try:
            os.close(os.open("victim", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=real))
        except OSError:
            pass
        if n % 256 == 0 and time.monotonic() > end:
            break
"""

SANDBOX_SECRET = b"sandbox"
CANARY_SECRET = b"CANARY-" + b"7" * 7770  # 7777 bytes: a size no sandbox file here has
CANARY_TOKEN = "CANARY-7777777"
CANARY_ONLY = "canary_only_name"


class Canary:
    """A host directory the swapper's symlink points at: a secret, a victim and (with `only`) a name only
    it holds."""

    def __init__(self, root: Path, only: bool = True) -> None:
        self.root = root
        root.mkdir()
        (root / "secret").write_bytes(CANARY_SECRET)
        (root / "victim").write_text("host victim")
        if only:
            (root / CANARY_ONLY).write_text("only on the host")
        self.names = set(os.listdir(root))
        self.secret_mtime_ns = (root / "secret").stat().st_mtime_ns

    def damage(self) -> list[str]:
        """What the sandbox did to the canary since the last call (repaired, so that each try starts
        from the same host state)."""
        found = []
        names = set(os.listdir(self.root))
        for extra in sorted(names - self.names):
            found.append(f"created {extra}")
            path = self.root / extra
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for missing in sorted(self.names - names):
            found.append(f"deleted {missing}")
        if "victim" not in names:
            (self.root / "victim").write_text("host victim")
        if "secret" not in names or (self.root / "secret").read_bytes() != CANARY_SECRET:
            found.append("changed secret")
            (self.root / "secret").write_bytes(CANARY_SECRET)
        if CANARY_ONLY in self.names - names:
            (self.root / CANARY_ONLY).write_text("only on the host")
        return found


def prepare_swap(sandbox: Any, canary: Path) -> None:
    """In the sandbox's working directory: d/ (secret, victim) and d_alt -> the host canary directory."""
    run(
        sandbox,
        f"mkdir d && printf {SANDBOX_SECRET.decode()} > d/secret && touch d/victim"
        f" && ln -s {shlex.quote(str(canary))} d_alt",
    )
    sandbox.upload_file(".swapper.py", SWAPPER.replace("{renameat2}", str(syscall_numbers()["renameat2"])))


@contextmanager
def swapping(sandbox: Any, pause: float = 0, seconds: float = 60) -> Iterator[Any]:
    """The swapper running in the sandbox for the duration of the block (killed on the way out)."""
    handle = sandbox.start_process(f"exec python3 .swapper.py {seconds} {pause}")
    try:
        deadline = time.monotonic() + 15
        while "swapping" not in handle.stdout:
            if "renameat2 failed" in handle.stdout or time.monotonic() > deadline:
                pytest.fail(f"the swapper did not start: {handle.stdout!r} {handle.stderr!r}")
            time.sleep(0.01)
        yield handle
    finally:
        handle.kill()


# --- fork bomb ----------------------------------------------------------------------------------------------

# A binary tree of shells, BOMB_DEPTH deep: 2**(BOMB_DEPTH+1)-1 = 8191 processes at most, far above any sane
# per-sandbox limit yet bounded, so that a vulnerable grainchain cannot take the host down. Its leaves block
# (without an exec: the bomb grows at the speed of fork) opening a FIFO that a timer opens after 20 s, which
# ends them all even if nobody kills them. It first prints its pid namespace, so that the host can count its
# processes without reading their memory while it forks, and tags them all with BOMB_TAG=<tag> in their
# environment (for the checks after).
BOMB_DEPTH = 12
BOMB_TAG = "GRAINCHAIN_REDTEAM_BOMB"


def bomb_script(tag: str) -> str:
    return (
        f"export {BOMB_TAG}={tag}; "
        'echo "bomb-ns $(readlink /proc/self/ns/pid)"; '
        "f=/tmp/bomb-$$; mkfifo $f 2>/dev/null || { f=$PWD/bomb-$$; mkfifo $f; } || exit 1; "
        "(sleep 20; exec 3<>$f; sleep 1) & "
        'b() { if [ "$1" -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & wait; else read x < $f; fi; }; '
        f"b {BOMB_DEPTH}"
    )


def bomb_ceiling() -> int:
    """The most processes a sandbox may hold for its bomb to count as contained: well below pid_max."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return min(4096, pid_max // 8)


def bomb_namespace(output: str) -> str | None:
    """The pid namespace the bomb printed ("pid:[...]"), once it has."""
    for line in output.splitlines():
        if line.startswith("bomb-ns pid:["):
            return line.split()[1]
    return None


def tagged_pids(tag: str) -> list[int]:
    """Live host processes of the bomb with this tag."""
    entry = f"{BOMB_TAG}={tag}".encode()
    return [pid for pid, environ in process_environments() if entry in environ and alive(pid)]


def pids_in_namespace(namespace: str) -> list[int]:
    """Host pids of the processes in a pid namespace (readlink only: cheap even while a bomb forks)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    found.append(int(name))
            except OSError:
                continue
    return found


# --- docker ---------------------------------------------------------------------------------------------------


def require_docker() -> None:
    """Skip when no engine answers (fail instead with GRAINCHAIN_REQUIRE_DOCKER=1)."""
    problem = None
    if shutil.which("docker") is None:
        problem = "no docker CLI"
    else:
        try:
            done = subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Id}}", BUSYBOX],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                problem = f"no docker engine with {BUSYBOX}: {done.stderr.strip()}"
        except subprocess.TimeoutExpired:
            problem = "the docker engine does not answer"
    if problem is None:
        return
    if os.environ.get("GRAINCHAIN_REQUIRE_DOCKER") == "1":
        pytest.fail(f"GRAINCHAIN_REQUIRE_DOCKER=1 but {problem}")
    pytest.skip(problem)
