"""Flavour-free helpers of the Docker provider: engine address, error mapping, tar archives, stream frames.

Both adapters (grainchain/providers/docker/_async/adapter.py and its generated sync twin) use these, so nothing here
does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from grainchain._types import BYTE_SIZE_FORMS, parse_byte_size
from grainchain.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    ConfigurationError,
    GrainchainError,
    InvalidArgumentError,
    ProviderError,
    ProviderUnavailableError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)

PROVIDER = "docker"
log = logging.getLogger("grainchain.docker")
DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_SOCKET = "/var/run/docker.sock"
WORKSPACE = "/workspace"
MIN_MEMORY = 6 * 2**20  # the engine refuses a smaller HostConfig.Memory (linuxMinMemory)
SNAPSHOT_REPO = "grainchain-snapshot"
SNAPSHOT_TAG = re.compile(r"[0-9a-f]{1,64}")  # create_snapshot's tags: hex, so no path can hide in one
LABEL = "grainchain"  # "1" on everything grainchain creates (images pass it on to their containers)
LABEL_SANDBOX = "grainchain.sandbox"  # the sandbox id: set on each container, never inherited usefully
LABEL_CONFIG = "grainchain.config"  # the SandboxConfig (JSON) the sandbox was created with
LABEL_SNAPSHOT = "grainchain.snapshot"
LABEL_SOURCE = "grainchain.snapshot.source"
LABEL_KIND = "grainchain.snapshot.kind"  # "filesystem" or "memory"
# memory snapshots: the saved checkpoint's directory; "" on filesystem snapshots. Written on every commit
# (a commit inherits the labels of the container's image, which anyone can build), and even so trusted only
# inside grainchain's own checkpoint directory (see owned_checkpoint).
LABEL_CHECKPOINT = "grainchain.snapshot.checkpoint"
# The container's main process. Not docker-init (tini): CRIU cannot restore a container it runs. A shell
# that waits reaps the orphans of exec'd commands (they become its children), so none linger as zombies.
INIT_COMMAND = ["/bin/sh", "-c", 'trap "exit 0" TERM; while :; do sleep 2147483647 & wait $!; done']


# A sandbox's container is named after the sandbox id. A restore swaps containers by renames (each atomic
# in the engine): the new container is made as "<id>.incoming" and started, the old one renamed
# "<id>.outgoing", the new one renamed "<id>", the old one removed. A client killed at any point leaves one
# container that is the sandbox (see pick_container); close removes every container with the sandbox's label.
INCOMING = ".incoming"
OUTGOING = ".outgoing"


def container_name(container: dict[str, Any]) -> str:
    """A container's name as GET /containers/json lists it (without the leading "/")."""
    names = container.get("Names") or [""]
    return str(names[0]).lstrip("/")


def pick_container(sandbox_id: str, containers: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """Which of the containers labelled with `sandbox_id` is the sandbox, and whether it must be renamed to
    the sandbox id first (a restore's swap was interrupted between its renames).

    The container named `sandbox_id` (or, made before containers had names, any other but a swap's) is the
    sandbox. Without one, a swap stopped between its renames: the incoming container was complete (it is
    started before the old one is renamed), so the swap is finished with it; failing that, the outgoing one
    is put back."""
    incoming, outgoing, others = [], [], []
    for container in containers:
        name = container_name(container)
        if name == sandbox_id + INCOMING:
            incoming.append(container)
        elif name == sandbox_id + OUTGOING:
            outgoing.append(container)
        else:
            others.append(container)
    if others:  # the named one, else a running one, else the newest
        others.sort(
            key=lambda c: (
                container_name(c) != sandbox_id,
                c.get("State") != "running",
                -int(c.get("Created", 0)),
            )
        )
        return others[0], False
    if incoming and outgoing:
        return incoming[0], True
    if outgoing or incoming:
        return (outgoing or incoming)[0], True
    return None, False


def init_command(ttl: float | None) -> list[str]:
    """The container's main process; with a ttl (provider_config) it ends after that many seconds, and
    the container with it, so that a forgotten sandbox does not run forever."""
    if ttl is None:
        return INIT_COMMAND
    script = 'trap "exit 0" TERM; sleep {} & s=$!; while kill -0 $s 2>/dev/null; do wait $s; done'
    return ["/bin/sh", "-c", script.format(max(1, round(ttl)))]


DEFAULT_PIDS_LIMIT = 4096
API_TIMEOUT = 60.0  # seconds for one ordinary Engine API call
CONNECT_TIMEOUT = 10.0
# The engine answers an exec start with "200 OK" and no framing, streams on the hijacked connection and
# then only half-closes it; without this header the client's pool takes that dead connection back and a
# concurrent request can be sent on it and fail ("ConnectionClosed when state=SEND_RESPONSE").
EXEC_START_HEADERS = {"Connection": "close"}
# An exec with stdin: the engine reads the command's stdin from the connection only once it was upgraded
# (101 UPGRADED); a half-close of our side is the command's end of file.
EXEC_STDIN_HEADERS = {"Connection": "Upgrade", "Upgrade": "tcp"}
START_HINT = (
    "start the Docker engine (`dockerd &`, `systemctl start docker`, or `.ci/docker-up` in grainchain's "
    "checkout) or point DOCKER_HOST at a running one"
)

# Go's os.FileMode bits, as the archive endpoints' stat header reports them
_GO_MODE_DIR = 1 << 31
_GO_MODE_SYMLINK = 1 << 27
_GO_MODE_SPECIAL = {1 << 23: 0o4000, 1 << 22: 0o2000, 1 << 20: 0o1000}  # setuid, setgid, sticky


@dataclass(frozen=True)
class Endpoint:
    """Where the engine listens: a unix socket (uds) or a TCP base URL."""

    base_url: str
    uds: str | None

    def describe(self) -> str:
        return f"unix://{self.uds}" if self.uds else self.base_url

    @property
    def publish_ip(self) -> str:
        """Where published ports listen: loopback for a local engine; a remote one's own interfaces."""
        return "127.0.0.1" if self.uds else "0.0.0.0"

    @property
    def remote_host(self) -> str | None:
        """The host name of a TCP engine (None for a unix socket)."""
        return None if self.uds else self.base_url.split("://", 1)[-1].rsplit(":", 1)[0]


def engine_endpoint(docker_host: str | None = None) -> Endpoint:
    host = docker_host if docker_host is not None else os.environ.get("DOCKER_HOST", "")
    if not host:
        return Endpoint("http://docker", DEFAULT_SOCKET)
    if host.startswith("unix://"):
        return Endpoint("http://docker", host[len("unix://") :])
    if host.startswith("tcp://"):
        return Endpoint("http://" + host[len("tcp://") :], None)
    raise ProviderUnavailableError(
        f"DOCKER_HOST={host!r} is not supported (use unix:///path/to/docker.sock or tcp://host:port)",
        provider=PROVIDER,
    )


def unreachable(endpoint: Endpoint, exc: BaseException) -> BackendConnectionError:
    """The engine is not there (no socket, nothing listening): is dockerd running, is DOCKER_HOST right?"""
    error = BackendConnectionError(
        f"cannot reach the Docker engine at {endpoint.describe()} ({_describe(exc)}): is dockerd running "
        f"and is that its socket? {START_HINT}",
        provider=PROVIDER,
        retryable=True,
    )
    error.__cause__ = exc
    return error


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # httpx's timeouts often have no message


def transport_error(endpoint: Endpoint, what: str, exc: BaseException) -> GrainchainError:
    """The grainchain error for a call to the engine that got no (complete) answer: BackendTimeoutError
    when it did not answer in time, BackendConnectionError when it could not be reached or the connection
    broke (both retryable), ProviderError for anything else httpx reports."""
    error: GrainchainError
    if isinstance(exc, httpx.TimeoutException):
        error = BackendTimeoutError(
            f"{what}: the Docker engine at {endpoint.describe()} did not answer in time ({_describe(exc)}); "
            "it may be busy (a big pull, commit or many sandboxes): try again, and check `docker info`",
            provider=PROVIDER,
            retryable=True,
        )
    elif isinstance(exc, httpx.ConnectError | FileNotFoundError | ConnectionRefusedError):
        return unreachable(endpoint, exc)
    elif isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | ConnectionError):
        error = BackendConnectionError(
            f"{what}: the connection to the Docker engine at {endpoint.describe()} broke ({_describe(exc)}); "
            "did dockerd stop or restart? Check `docker info`, then try again",
            provider=PROVIDER,
            retryable=True,
        )
    else:
        error = ProviderError(f"{what}: {_describe(exc)}", provider=PROVIDER)
    error.__cause__ = exc
    return error


def engine_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body.decode("utf-8", "replace").strip()


class EngineForbiddenError(ProviderError):
    """Internal: the engine refused a write (a 403: a read-only root file system or volume); the adapter
    turns it into PermissionDeniedError for the path."""

    retryable = False

    def __init__(self, message: str, said: str) -> None:
        super().__init__(message, provider=PROVIDER)
        self.said = said


class EngineNotFoundError(ProviderError):
    """Internal: the engine has no such object (a 404). `kind`: "image", "volume", "exec", "path",
    "checkpoint", "network" or "object" (not known). The adapter catches it where a missing object has a
    meaning (pull a missing image, create a missing volume, SnapshotNotFoundError for a snapshot's image,
    FileNotFoundInSandboxError for a path, ConfigurationError for a network); one that escapes is a
    ProviderError, never a SandboxNotFoundError. A missing *container* is not one: see engine_error."""

    retryable = False

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, provider=PROVIDER)
        self.kind = kind


# What the engine's 404 messages say (daemon/errdefs and the API handlers), first match wins; then the URL
# decides (a HEAD has no body).
_NOT_FOUND_MESSAGES = (
    ("container", re.compile(r"no such container", re.IGNORECASE)),
    ("exec", re.compile(r"no such exec", re.IGNORECASE)),
    ("volume", re.compile(r"no such volume", re.IGNORECASE)),
    ("path", re.compile(r"could not find the file|no such file or directory", re.IGNORECASE)),
    ("checkpoint", re.compile(r"checkpoint", re.IGNORECASE)),
    ("network", re.compile(r"network \S+ not found|no such network", re.IGNORECASE)),
    (
        "image",
        re.compile(
            r"no such image|pull access denied|repository does not exist|manifest unknown"
            r"|manifest for .* not found",
            re.IGNORECASE,
        ),
    ),
)
_NOT_FOUND_URLS = (
    ("image", re.compile(r"/images/|/build$")),
    ("volume", re.compile(r"/volumes/")),
    ("exec", re.compile(r"/exec/")),
    ("path", re.compile(r"/containers/[^/]+/archive$")),
    ("checkpoint", re.compile(r"/containers/[^/]+/checkpoints")),
)


def not_found_kind(url: str, engine_said: str) -> str:
    """What a 404 of the engine is about: "container", "image", "volume", "exec", "path", "checkpoint",
    "network" or "object" (unknown); by the engine's message, else by the URL called."""
    for kind, pattern in _NOT_FOUND_MESSAGES:
        if pattern.search(engine_said):
            return kind
    path = url.partition("?")[0]
    for kind, pattern in _NOT_FOUND_URLS:
        if pattern.search(path):
            return kind
    return "object"


def engine_error(status: int, body: bytes, what: str, url: str = "") -> GrainchainError:
    """The grainchain error for a failed Engine API call (`what` names the call for the message, `url` is
    the path called). A 404 is SandboxNotFoundError only when the engine says the container is missing:
    the adapter addresses no container but its sandbox's, so the sandbox is gone. Every other 404 is an
    EngineNotFoundError for the caller to map."""
    said = engine_message(body)
    message = f"{what}: docker engine answered {status}: {said}"
    if status == 404:
        kind = not_found_kind(url, said)
        if kind == "container":
            return SandboxNotFoundError(
                f"{message} (the sandbox's container is gone: removed outside grainchain?)", provider=PROVIDER
            )
        return EngineNotFoundError(kind, message)
    if status == 403:
        return EngineForbiddenError(message, said)
    if status == 409 and "is not running" in message:
        return SandboxNotRunningError(
            f"{message} (the container stopped: its provider_config ttl passed, or something outside "
            "grainchain stopped it)",
            provider=PROVIDER,
        )
    if status == 409:
        return ProviderError(message, provider=PROVIDER, retryable=True)
    if status == 400:
        return InvalidArgumentError(message, argument="config", provider=PROVIDER)
    return ProviderError(message, provider=PROVIDER, retryable=status >= 500 or None)


def split_image(image: str) -> tuple[str, str]:
    """("repo", "tag") of an image reference (a digest stays in the repo part)."""
    if "@" in image:
        return image, ""
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


def pull_error(image: str, detail: str) -> ConfigurationError:
    """The image SandboxConfig names is not on the engine and the engine cannot pull it."""
    return ConfigurationError(
        f"docker image {image!r} is not on this engine and cannot be pulled ({detail}); build or load it "
        "first (`docker build`, `docker load`, `docker import`), or pick another SandboxConfig.image",
        provider=PROVIDER,
    )


class ProgressLog:
    """Follows an engine progress stream (JSON lines of an image pull or build): logs what happens, step by
    step and layer by layer (not every byte), to the `grainchain.docker` logger at INFO; keeps the error
    the stream reports and the last lines of build output for the message."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.error: str | None = None
        self.tail: list[str] = []
        self._layer_status: dict[str, str] = {}

    def feed(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("error"):
            self.error = str(event["error"]).strip()
            return
        text = event.get("stream")
        if isinstance(text, str):
            for part in text.splitlines():
                if part.strip():
                    self.tail = [*self.tail[-19:], part]
                    log.info("%s: %s", self.what, part)
            return
        status, layer = event.get("status"), str(event.get("id", ""))
        if isinstance(status, str) and self._layer_status.get(layer) != status:
            self._layer_status[layer] = status
            log.info("%s: %s%s", self.what, f"{layer}: " if layer else "", status)


# -- provider_config ------------------------------------------------------------------------------------


def _config_error(key: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"provider_config[{key!r}] {problem}", argument="provider_config", provider=PROVIDER
    )


@dataclass(frozen=True)
class Volumes:
    """provider_config["volumes"]: a list of "/path" (an anonymous volume, removed with the sandbox),
    "name:/path[:ro]" (a named volume; created, labelled and removed with the sandbox if it did not exist)
    and "/host/dir:/path[:ro]" (a bind mount of an existing host directory)."""

    binds: list[str]
    anonymous: list[str]
    named: list[str]


def parse_volumes(value: Any) -> Volumes:
    if value is None:
        return Volumes([], [], [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _config_error("volumes", f"must be a list of strings, got {value!r}")
    volumes = Volumes([], [], [])
    for spec in value:
        parts = spec.split(":")
        if len(parts) == 1:
            if not spec.startswith("/"):
                raise _config_error("volumes", f"{spec!r}: the path in the sandbox must be absolute")
            volumes.anonymous.append(spec)
            continue
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise _config_error("volumes", f"{spec!r} is not SOURCE:/path or SOURCE:/path:ro|rw")
        source, target = parts[0], parts[1]
        if not source or not target.startswith("/"):
            raise _config_error("volumes", f"{spec!r}: the source must be set and the path absolute")
        if source.startswith("/"):
            if not os.path.isdir(source):
                raise _config_error("volumes", f"{spec!r}: {source} is not a directory on this machine")
        else:
            volumes.named.append(source)
        volumes.binds.append(spec)
    return volumes


def parse_disk_limit(value: Any) -> int | None:
    """provider_config["disk_limit"] in bytes (None: no quota, the engine's default)."""
    if value is None:
        return None
    try:
        return parse_byte_size(value)
    except ValueError:
        raise ConfigurationError(
            f"provider_config['disk_limit'] of docker must be a size, got {value!r}; accepted: {BYTE_SIZE_FORMS}",
            provider=PROVIDER,
        ) from None


# What engines say when a container's StorageOpt size cannot be had (overlay2 20.10: "--storage-opt is
# supported only for overlay over xfs with 'pquota' mount option"; other drivers word it their own way).
_STORAGE_OPT_REFUSED = re.compile(r"storage[- ]?opt|quota", re.IGNORECASE)


def storage_opt_refused(engine_said: str) -> bool:
    """Whether an engine's error is its refusal of a container's StorageOpt (disk_limit)."""
    return _STORAGE_OPT_REFUSED.search(engine_said) is not None


def disk_limit_error(value: Any, engine_said: str, info: dict[str, Any]) -> ConfigurationError:
    """Why provider_config disk_limit cannot be had on this engine, and what to do; `info` is GET /info."""
    driver = str(info.get("Driver") or "unknown")
    status = {str(pair[0]): str(pair[1]) for pair in info.get("DriverStatus") or [] if len(pair) == 2}
    backing = status.get("Backing Filesystem", "unknown")
    root = str(info.get("DockerRootDir") or "the engine's data root")
    return ConfigurationError(
        f"provider_config['disk_limit'] = {value!r} cannot be enforced by this Docker engine (storage driver "
        f"{driver}, backing filesystem {backing}, data root {root}): {engine_said}. The overlay2 driver has "
        f"a disk quota per container only on XFS mounted with the 'pquota' option: put {root} on such a "
        "filesystem (grainchain's .ci/docker-up mounts an XFS image there) or use a storage driver that "
        "supports `--storage-opt size`; or leave disk_limit unset (no quota).",
        provider=PROVIDER,
    )


# -- builds ---------------------------------------------------------------------------------------------

BUILD_REPO = "grainchain-build"


def build_context(dockerfile: str | None, context: str | None) -> tuple[bytes, str, str]:
    """The tar of a build context, the Dockerfile's name inside it, and a content tag for the image.

    provider_config: `dockerfile` (a path; default <build_context>/Dockerfile) and/or `build_context`
    (a directory; default the Dockerfile's directory). A Dockerfile outside the context is added to it.
    .dockerignore is not read: keep the context small."""
    if context is None:
        context = os.path.dirname(os.path.abspath(str(dockerfile)))
    context = os.path.abspath(str(context))
    if not os.path.isdir(context):
        raise InvalidArgumentError(
            f"provider_config['build_context'] {context!r} is not a directory",
            argument="provider_config",
            provider=PROVIDER,
        )
    dockerfile = os.path.abspath(os.path.join(context, str(dockerfile or "Dockerfile")))
    if not os.path.isfile(dockerfile):
        raise InvalidArgumentError(
            f"provider_config['dockerfile']: no Dockerfile at {dockerfile!r}",
            argument="provider_config",
            provider=PROVIDER,
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(context, arcname=".")
        inside = os.path.relpath(dockerfile, context)
        if inside.startswith(".."):
            inside = ".grainchain.Dockerfile"
            tar.add(dockerfile, arcname=inside)
    data = buffer.getvalue()
    return data, inside, hashlib.sha256(data + inside.encode()).hexdigest()[:20]


# -- exec streams ---------------------------------------------------------------------------------------


class FrameDecoder:
    """Splits Docker's multiplexed raw stream (8-byte headers: stream, 0, 0, 0, big-endian size) into
    (stream number, payload) pairs; 1 is stdout, 2 is stderr."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                break
            frames.append((self._buffer[0], bytes(self._buffer[8 : 8 + size])))
            del self._buffer[: 8 + size]
        return frames


# Kills every process whose environment carries the exec marker ($1), inside the container (its own exec, so
# it sees the container's pids). One grep reads every /proc/<pid>/environ per scan (a process per candidate
# made a 2,000-process fork bomb take 6 s); what it finds is stopped, so it can fork no more, and the scan is
# repeated until two agree; then all are killed. A round starts again while any is left. Exit 0: none left;
# KILL_STOPPED_ALL: the container is at its pids limit and every process in it was stopped; anything else
# (e.g. "can't fork", when a fork bomb won the race for the last pids) means some may be left.
KILL_SCRIPT = r"""
id="GRAINCHAIN_EXEC_ID=$1"
# At the pids limit nothing below could fork: stop every process (a builtin, no fork) and say so.
for d in /sys/fs/cgroup/pids /sys/fs/cgroup; do
  if [ -r "$d/pids.max" ] && read max <"$d/pids.max" && read cur <"$d/pids.current"; then
    [ "$max" != max ] && [ $((cur + 4)) -ge "$max" ] && { kill -s STOP -1; exit 3; }
    break
  fi
done
if printf '%s\0' "$id" | grep -qzxF -e "$id" 2>/dev/null; then
  scan() { grep -lzxsF -e "$id" /proc/[0-9]*/environ; }
else  # a grep without -z: a tr and a grep per process
  scan() { for d in /proc/[0-9]*; do tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF -e "$id" && echo "$d/environ"; done; }
fi
for round in 1 2 3 4 5 6 7 8 9 10; do
  last=-1
  while :; do
    pids="" n=0
    for f in $(scan); do
      p=${f#/proc/}; p=${p%/environ}
      [ "$p" = "$$" ] || { pids="$pids $p"; n=$((n + 1)); }
    done
    [ "$n" = 0 ] && exit 0
    kill -s STOP $pids 2>/dev/null
    [ "$n" = "$last" ] && break
    last=$n
  done
  kill -s KILL $pids 2>/dev/null
done
exit 1
"""
KILL_STOPPED_ALL = 3
EXEC_FAILED = 126  # the exit code of an exec the runtime could not start (at the pids limit, runc may not)
# Fork-free (a builtin of the exec'd shell): stop or continue every process of the container but its pid 1.
# For a kill that cannot fork because a fork bomb holds every pid the container's pids limit allows.
SIGNAL_ALL_SCRIPT = 'kill -s "$1" -1'
KILL_PIDS_HEADROOM = 64  # pids lent to the container for such a kill

# Lists a directory ($1) without a process per entry (that made 1,000 entries take 0.6 s): the names ("./x"),
# each followed by NUL, then one more NUL, then "<raw mode in hex> <size> <mtime>" lines in the same order
# (two walks of one directory list it in the same order; `find -exec {} +` batches stat's arguments).
# Links are not followed.
LIST_SCRIPT = r"""
cd -- "$1" || exit 44
find . -mindepth 1 -maxdepth 1 -print0 && printf '\0' &&
exec find . -mindepth 1 -maxdepth 1 -exec stat -c '%f %s %Y' -- {} +
"""
STAT_SCRIPT = r"""[ -e "$1" ] || [ -L "$1" ] || exit 44; stat -c '%f %s %Y' -- "$1" """
# mkdir -p, as a command; refused (exit 13: the nearest existing ancestor is a directory, so the sandbox
# refused the entry: a read-only mount, permissions, procfs) or blocked (exit 20: a file is in the way)
MKDIR_SCRIPT = r"""[ -d "$1" ] && exit 0; mkdir -p -- "$1" 2>/dev/null && exit 0
p="$1"; while [ -n "$p" ] && [ ! -e "$p" ]; do p="${p%/*}"; done
if [ -z "$p" ] || [ -d "$p" ]; then exit 13; fi; exit 20"""
DELETE_SCRIPT = r"""[ -e "$1" ] || [ -L "$1" ] || exit 44; rm -rf -- "$1" 2>&1 || exit 13"""
# Paths below the mounts the container runtime makes (procfs, sysfs, /dev): the engine's archive API
# works on the container's root file system and its volumes only, so these are read and checked by a
# command, as a command sees them.
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev")
READ_SCRIPT = r"""[ -f "$1" ] || { [ -e "$1" ] && exit 21; exit 44; }; exec cat -- "$1" """
EXISTS_SCRIPT = r"""[ -e "$1" ] || [ -L "$1" ] || exit 44"""
# (a real write: busybox's `test -w` is true for root even on a read-only mount)
WRITABLE_SCRIPT = r"""[ -d "$1" ] || exit 44; t="$1/.grainchain-probe-$$"
( : > "$t" ) 2>/dev/null || exit 13; rm -f -- "$t" """
REFUSED = 13  # exit code of the scripts above for what the sandbox refuses a command
MISSING = 44  # exit code of the scripts above for a path that does not exist


def under_runtime_mount(path: str) -> bool:
    return any(path == m or path.startswith(m + "/") for m in RUNTIME_MOUNTS)


NOT_A_DIRECTORY = 20
# $1 must be an empty directory (exit 20: not a directory, 39: not empty)
EMPTY_DIRECTORY_SCRIPT = r"""[ -d "$1" ] || exit 20; [ -z "$(ls -A -- "$1")" ] || exit 39"""
# the hidden directory $1 renamed onto $2, which must be missing or an empty directory (rmdir checks)
MOVE_DIRECTORY_SCRIPT = r"""if [ -d "$2" ] && [ ! -L "$2" ]; then rmdir -- "$2" 2>/dev/null || exit 39
elif [ -e "$2" ] || [ -L "$2" ]; then exit 20; fi
mv -- "$1" "$2" """
# An upload's last step: its hidden file ($1) renamed over the target ($2) in the same directory (rename(2)
# is atomic); removed instead when the target became a directory meanwhile. Hidden files of uploads whose
# client died are removed once older than any upload can take (their mtime is the upload's start).
UPLOAD_PREFIX = ".grainchain-upload-"
IS_A_DIRECTORY = 21
REPLACE_SCRIPT = r"""[ -d "$2" ] && [ ! -L "$2" ] && { rm -f -- "$1"; exit 21; }
mv -f -- "$1" "$2" || { rm -f -- "$1"; exit 1; }
find "${1%/*}/" -maxdepth 1 -name '.grainchain-upload-*' -mmin +15 -exec rm -f -- {} + 2>/dev/null
exit 0"""
# The container's count of OOM kills: cgroup v2, then v1 (kernels >= 4.13 count them there).
OOM_SCRIPT = "cat /sys/fs/cgroup/memory.events 2>/dev/null || cat /sys/fs/cgroup/memory/memory.oom_control"


def oom_kills(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def file_info_from_stat(path: str, line: str) -> dict[str, Any]:
    """FileInfo fields from `stat -c '%f %s %Y'` output (mode is st_mode in hex)."""
    raw_mode, size, mtime = line.split()
    mode = int(raw_mode, 16)
    kind = mode & 0o170000
    is_dir = kind == 0o040000
    return {
        "path": path,
        "name": posixpath.basename(path) or path,
        "size": 0 if is_dir else int(size),
        "is_directory": is_dir,
        "is_symlink": kind == 0o120000,
        "mode": mode & 0o7777,
        "modified_time": datetime.fromtimestamp(int(mtime), UTC),
    }


def parse_listing(directory: str, output: bytes) -> list[dict[str, Any]]:
    """FileInfo fields of LIST_SCRIPT's output."""
    names, separator, stats = output.partition(b"\0\0")
    if not separator:  # an empty directory
        return []
    lines = stats.decode().splitlines()
    entries = []
    for name, stat_line in zip(names.split(b"\0"), lines, strict=True):
        full = posixpath.join(directory, name.decode("utf-8", "replace").removeprefix("./"))
        entries.append(file_info_from_stat(full, stat_line))
    return sorted(entries, key=lambda entry: str(entry["name"]))


@dataclass(frozen=True)
class PathStat:
    """What HEAD /containers/{id}/archive says about a path (the link itself, not its target)."""

    name: str
    size: int
    is_directory: bool
    is_symlink: bool
    link_target: str
    permissions: int  # the unix permission bits, setuid/setgid/sticky included


def parse_path_stat(header: str) -> PathStat:
    data = json.loads(base64.b64decode(header))
    mode = int(data.get("mode", 0))
    return PathStat(
        name=str(data.get("name", "")),
        size=int(data.get("size", 0)),
        is_directory=bool(mode & _GO_MODE_DIR),
        is_symlink=bool(mode & _GO_MODE_SYMLINK),
        link_target=str(data.get("linkTarget", "")),
        permissions=(mode & 0o777) | sum(bit for go, bit in _GO_MODE_SPECIAL.items() if mode & go),
    )


# -- archives -------------------------------------------------------------------------------------------


# Archives are streamed in pieces of this size both ways: time linear in size, memory bounded (httpx sends
# a body given as one bytes object by slicing off what each send() took: quadratic in its size).
TAR_CHUNK = 256 * 1024
_TAR_BLOCK = 512
_TAR_END = bytes(2 * _TAR_BLOCK)  # the end-of-archive marker
_TAR_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_TAR_LONG_NAMES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def tar_one_file(name: str, data: bytes, mode: int = 0o644) -> tuple[int, Iterator[bytes]]:
    """A one-file tar archive of `data` as (its size, its pieces): the header, the content in TAR_CHUNK
    slices, the padding and the end-of-archive blocks (no copy of the whole content is made)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    tail = bytes(-len(data) % _TAR_BLOCK) + _TAR_END

    def pieces() -> Iterator[bytes]:
        yield header
        view = memoryview(data)
        for start in range(0, len(data), TAR_CHUNK):
            yield bytes(view[start : start + TAR_CHUNK])
        yield tail

    return len(header) + len(data) + len(tail), pieces()


class FirstFileReader:
    """Reads the first member of a tar archive as its pieces arrive (`feed`), keeping only that member's
    content: the stream's headers are parsed by tarfile block by block, PAX and GNU extension members
    skipped (a PAX `size` record is honoured). `regular` is None until the member's header has arrived,
    then whether it is a regular file; `content()` is its data once the archive has been read."""

    def __init__(self) -> None:
        self.regular: bool | None = None
        self._pending = bytearray()  # header bytes not parsed yet
        self._pieces: list[bytes] = []
        self._remaining = 0  # content bytes still to come
        self._pax_size: int | None = None

    @property
    def done(self) -> bool:
        """Nothing more is needed from the stream."""
        return self.regular is False or (self.regular is True and self._remaining == 0)

    def feed(self, chunk: bytes) -> None:
        if self.regular is None:
            self._pending += chunk
            self._parse()
        elif self.regular and self._remaining:
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        piece = chunk[: self._remaining]
        self._pieces.append(piece)
        self._remaining -= len(piece)

    def _parse(self) -> None:
        while self.regular is None and len(self._pending) >= _TAR_BLOCK:
            block = bytes(self._pending[:_TAR_BLOCK])
            if block == bytes(_TAR_BLOCK):  # the end of an archive without members
                self.regular = False
                return
            try:
                info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ProviderError(f"the engine sent a broken archive ({exc})", provider=PROVIDER) from exc
            if info.type in _TAR_EXTENSIONS or info.type in _TAR_LONG_NAMES:
                end = _TAR_BLOCK + info.size + (-info.size % _TAR_BLOCK)
                if len(self._pending) < end:
                    return  # the rest of the extension member is still to come
                if info.type != tarfile.XGLTYPE and info.type in _TAR_EXTENSIONS:
                    self._pax_size = _pax_size(bytes(self._pending[_TAR_BLOCK : _TAR_BLOCK + info.size]))
                del self._pending[:end]
                continue
            self.regular = info.isreg()
            if self.regular:
                self._remaining = info.size if self._pax_size is None else self._pax_size
                rest = bytes(self._pending[_TAR_BLOCK:])
                if rest:
                    self._take(rest)
            self._pending = bytearray()

    def content(self) -> bytes | None:
        """The first member's content (None when it is not a regular file); ProviderError when the stream
        ended before it did."""
        if self.regular is None or (self.regular and self._remaining):
            raise ProviderError(
                "the engine's archive ended in the middle of the file (did the connection break?)",
                provider=PROVIDER,
                retryable=True,
            )
        return b"".join(self._pieces) if self.regular else None


def _pax_size(records: bytes) -> int | None:
    """The `size` of a PAX extended header's records ("<length> <key>=<value>\\n" each), if any."""
    size = None
    position = 0
    while position < len(records):
        length_text, _, _ = records[position : position + 20].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= 0:
            break
        record = records[position : position + int(length_text)]
        key, _, value = record.partition(b" ")[2].rstrip(b"\n").partition(b"=")
        if key == b"size" and value.isdigit():
            size = int(value)
        position += int(length_text)
    return size


def untar_first_file(archive: bytes) -> bytes | None:
    """The content of a whole archive's first member when it is a regular file, else None."""
    reader = FirstFileReader()
    for start in range(0, len(archive), TAR_CHUNK):
        reader.feed(archive[start : start + TAR_CHUNK])
        if reader.done:
            break
    return reader.content()


def resolve(cwd: str, path: str) -> str:
    """The absolute, normalised in-container path of `path` (relative paths start at `cwd`)."""
    joined = posixpath.normpath(posixpath.join(cwd, path))
    return "/" + joined.lstrip("/")  # normpath keeps a leading "//"


def image_created(created: Any) -> datetime:
    if isinstance(created, int | float):
        return datetime.fromtimestamp(created, UTC)
    text = str(created)
    # the engine's RFC 3339 has nanoseconds; Python takes microseconds
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- checkpoints (memory snapshots) ---------------------------------------------------------------------
# The engine keeps a container's checkpoints in <DockerRootDir>/containers/<id>/checkpoints/<name>/ and
# restores only from there (dockerd 20.10 refuses a custom directory). A memory snapshot saves a copy of
# that directory in grainchain's state directory and puts it back into whichever container restores it.

RESTORE_MARK = "grainchain-restore.json"


def checkpoint_path(docker_root: str, container_id: str, name: str) -> str:
    return os.path.join(docker_root, "containers", container_id, "checkpoints", name)


def owned_checkpoint(store: str, labelled: str | None) -> str | None:
    """The real path of the saved checkpoint a snapshot image's label names, if it is a directory entry
    directly inside grainchain's checkpoint store `store` (<state_dir>/docker/checkpoints); else None.

    A label is only a hint: images carry labels their author chose and commits inherit them, so a label
    must never make grainchain delete or copy a host directory outside its own store."""
    if not labelled:
        return None
    real = os.path.realpath(labelled)
    if os.path.dirname(real) != os.path.realpath(store):
        log.debug(
            "ignoring the checkpoint label %r: not inside grainchain's checkpoint store %s", labelled, store
        )
        return None
    return real


def stage_checkpoint(checkpoint: str, saved: str | None = None) -> None:
    """Prepare a checkpoint directory for a restore: copy the saved one in when given, then add a file
    that makes it unique. moby#42900: the engine uploads the directory to containerd as a tar whose digest
    equals the blob containerd made when checkpointing, and fails with "already exists" until containerd's
    garbage collector has run (seconds on a fresh daemon); a unique file gives the upload its own digest."""
    if saved is not None:
        if os.path.exists(checkpoint):
            shutil.rmtree(checkpoint)
        shutil.copytree(saved, checkpoint, symlinks=True)
    with open(os.path.join(checkpoint, RESTORE_MARK), "w") as mark:
        json.dump({"restore": uuid.uuid4().hex, "at": time.time()}, mark)


def save_checkpoint(checkpoint: str, saved: str) -> None:
    """Copy a container's checkpoint directory to `saved` (replacing what is there)."""
    if os.path.exists(saved):
        shutil.rmtree(saved)
    os.makedirs(os.path.dirname(saved), mode=0o700, exist_ok=True)
    shutil.copytree(checkpoint, saved, symlinks=True, ignore=shutil.ignore_patterns(RESTORE_MARK))


def memory_snapshot_problem(endpoint: Endpoint, info: dict[str, Any], criu: str | None) -> str | None:
    """Why memory snapshots cannot work with this engine (None when they can): they need the engine's
    experimental mode, CRIU, and the engine's data directory on this machine, writable by this process."""
    if not info.get("ExperimentalBuild"):
        return "the Docker engine does not run in experimental mode (start dockerd with --experimental)"
    if endpoint.uds is None:
        return f"the Docker engine at {endpoint.describe()} is remote; checkpoints need its data directory"
    root = str(info.get("DockerRootDir") or "")
    containers = os.path.join(root, "containers")
    if not root or not os.access(containers, os.W_OK | os.X_OK):
        return (
            f"this process cannot write the engine's checkpoint directories under {containers} (run as root)"
        )
    if criu is None:
        return "CRIU is not installed (checkpoints need criu >= 4 on the engine's PATH)"
    return None
