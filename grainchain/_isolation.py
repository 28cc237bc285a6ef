"""Namespaces for the local provider (flavour-free): one bubblewrap "holder" per sandbox, commands join it.

    bwrap --unshare-user/pid/ipc/uts [--unshare-net] ... -- sleep infinity      the holder, started once
    nsenter -t <holder> -U -m -u -i -p [-n] -r -w -- [env -C DIR] /bin/sh -c CMD   every command

One holder per sandbox (not one bwrap per command) so that all commands of a sandbox share one view, the
way the processes of a container do: a daemon started by one command is visible to the next, pids written
by one command mean the same thing to the next, and a network namespace without network is still one
namespace (a server on its 127.0.0.1 answers the sandbox's other commands). Joining with nsenter also costs
less than a fresh bwrap.

What a sandboxed command sees: its workspace at /workspace, a private /tmp, the host's system directories
read-only (/usr, /etc, /opt, the /bin-style links), fresh /proc and /dev; nothing else of the host (no
/root, /home, host /tmp, other sandboxes). It runs as root of its own user namespace: full capabilities
over its namespaces, none over the host's (it cannot remount the read-only directories, make device nodes,
or see host processes). The host's password hashes are masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from grainchain.errors import ConfigurationError, ProviderError, ProviderUnavailableError

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


def namespaces_unavailable() -> str | None:
    """Why sandboxes cannot get namespaces here (None when they can). Probed once per process by running
    the same kind of bwrap the holder is, and joining it with nsenter."""
    if "namespaces" in _probe_cache:
        return _probe_cache["namespaces"]
    reason: str | None = None
    missing = [tool for tool in ("bwrap", "nsenter") if shutil.which(tool) is None]
    if missing:
        reason = (
            f"{' and '.join(missing)} not found (install bubblewrap and util-linux: "
            "`apt-get install bubblewrap`)"
        )
    else:
        try:
            probe = subprocess.run(
                [
                    "bwrap",
                    *_namespace_args(network="none"),
                    *_system_binds(),
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--",
                    "/bin/true",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
            if probe.returncode != 0:
                reason = (
                    f"bwrap cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()}"
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"bwrap failed to run: {exc}"
    _probe_cache["namespaces"] = reason
    return reason


# -- provider_config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The local provider's provider_config, checked."""

    isolation: Isolation
    network: Network
    pids_limit: int | None
    snapshots: str = "copy"  # "layers" or "copy": decided by the adapter (grainchain/_layers.py)

    def stored(self) -> dict[str, Any]:
        return {
            "isolation": self.isolation,
            "network": self.network,
            "pids_limit": self.pids_limit,
            "snapshots": self.snapshots,
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


def _namespace_args(*, network: str) -> list[str]:
    args = ["--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    args += ["--hostname", HOSTNAME]
    if network == "none":
        args.append("--unshare-net")
    return args


def holder_args(workspace: Path, tmp: Path, *, network: str) -> list[str]:
    """bwrap's arguments for a sandbox's holder (passed through --args, so that host paths do not show
    in the sandbox's /proc/1/cmdline)."""
    return [
        *_namespace_args(network=network),
        *_system_binds(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--bind", str(workspace), WORKSPACE,
        "--bind", str(tmp), SANDBOX_TMP,
        "--chdir", WORKSPACE,
        # no --die-with-parent: it follows the creating *thread*, and a kept-alive sandbox outlives us
    ]  # fmt: skip


@dataclass(frozen=True)
class Holder:
    """A running holder: `pid` is the host pid of its pid 1 (bwrap's reaper: when it dies, every process of
    the sandbox dies), `target` the host pid of the process whose namespaces, root and cwd commands join."""

    pid: int
    target: int
    network: str

    def enter_argv(self, cwd: str | None) -> list[str]:
        """The argv prefix that runs a program inside the holder's namespaces, at `cwd` (sandbox view)."""
        argv = ["nsenter", "-t", str(self.target), "-U", "--preserve-credentials", "-m", "-u", "-i", "-p"]
        if self.network == "none":
            argv.append("-n")
        argv += ["-r", "-w", "--"]
        if cwd is not None and cwd != WORKSPACE:
            argv += ["env", "-C", cwd, "--"]
        return argv

    def alive(self) -> bool:
        return _alive(self.target)

    def pids(self) -> list[int]:
        """Host pids of the holder's own processes: bwrap outside, its pid 1, the waiting `sleep`."""
        found = [self.pid, self.target]
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                found.append(int(f.read().rsplit(b")", 1)[1].split()[1]))
        except (OSError, ValueError, IndexError):
            pass
        return found

    def wait_gone(self, within: float = 5.0) -> None:
        """Wait until the (killed) holder has exited: its mount namespace, and what it mounted, go with it."""
        deadline = time.monotonic() + within
        while (_alive(self.pid) or _alive(self.target)) and time.monotonic() < deadline:
            time.sleep(0.001)


def _alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def start_holder(
    workspace: Path,
    tmp: Path,
    log_file: Path,
    *,
    network: str,
    env: Mapping[str, str],
    launcher: Sequence[str] = (),
) -> Holder:
    """Start the holder of a sandbox and wait until commands can join it. `launcher` is an argv prefix
    (cgroup placement, rlimits) that bwrap is started through.

    `setsid --fork` makes the holder nobody's child here: a kept-alive sandbox outlives this process, and
    nothing of ours has to reap it (PID 1 or the nearest subreaper does)."""
    args_r, args_w = os.pipe()
    info_r, info_w = os.pipe()
    try:
        payload = "\0".join(["--info-fd", str(info_w), *holder_args(workspace, tmp, network=network)]) + "\0"
        with open(log_file, "wb") as stderr:
            subprocess.run(
                [*launcher, "setsid", "--fork", "bwrap", "--args", str(args_r), "--", "sleep", "infinity"],
                cwd="/",
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(args_r, info_w),
                check=True,
            )
        os.close(args_r)
        args_r = -1
        os.close(info_w)
        info_w = -1
        with os.fdopen(args_w, "wb") as f:
            args_w = -1
            f.write(payload.encode())
        init = _read_child_pid(info_r)  # EOF first: bwrap failed
        deadline = time.monotonic() + HOLDER_START_TIMEOUT
        while init is not None and not (kids := _children(init)):  # pid 1 forks `sleep` once set up
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
        return Holder(pid=init, target=kids[0], network=network)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProviderError(f"cannot start bwrap: {exc}", provider=PROVIDER) from exc
    finally:
        for fd in (args_r, args_w, info_r, info_w):
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
        kids = _children(nsenter_pid)
        if kids:
            return kids[0]
        try:
            os.kill(nsenter_pid, 0)
        except ProcessLookupError:
            return None
        time.sleep(0.0005)
    return None
