"""Flavour-free helpers of the Docker provider: engine address, error mapping, tar archives, stream frames.

Both adapters (grainchain/_async/providers/docker.py and its generated sync twin) use these, so nothing here
does I/O.
"""

from __future__ import annotations

import base64
import io
import json
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from grainchain.errors import (
    GrainchainError,
    InvalidArgumentError,
    ProviderError,
    ProviderUnavailableError,
    SandboxNotFoundError,
)

PROVIDER = "docker"
DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_SOCKET = "/var/run/docker.sock"
WORKSPACE = "/workspace"
SNAPSHOT_REPO = "grainchain-snapshot"
LABEL = "grainchain"  # "1" on everything grainchain creates (images pass it on to their containers)
LABEL_SANDBOX = "grainchain.sandbox"  # the sandbox id: set on each container, never inherited usefully
LABEL_CONFIG = "grainchain.config"  # the SandboxConfig (JSON) the sandbox was created with
LABEL_SNAPSHOT = "grainchain.snapshot"
LABEL_SOURCE = "grainchain.snapshot.source"
KNOWN_PROVIDER_CONFIG = frozenset({"image", "network", "pids_limit"})
DEFAULT_PIDS_LIMIT = 4096
API_TIMEOUT = 60.0  # seconds for one ordinary Engine API call
CONNECT_TIMEOUT = 10.0
START_HINT = (
    "start the Docker engine (`dockerd &`, `systemctl start docker`, or `.ci/docker-up` in grainchain's "
    "checkout) or point DOCKER_HOST at a running one"
)

# Go's os.FileMode bits, as the archive endpoints' stat header reports them
_GO_MODE_DIR = 1 << 31
_GO_MODE_SYMLINK = 1 << 27


@dataclass(frozen=True)
class Endpoint:
    """Where the engine listens: a unix socket (uds) or a TCP base URL."""

    base_url: str
    uds: str | None

    def describe(self) -> str:
        return f"unix://{self.uds}" if self.uds else self.base_url


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


def unreachable(endpoint: Endpoint, exc: BaseException) -> ProviderUnavailableError:
    error = ProviderUnavailableError(
        f"cannot reach the Docker engine at {endpoint.describe()} ({exc}): {START_HINT}", provider=PROVIDER
    )
    error.__cause__ = exc
    return error


def engine_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body.decode("utf-8", "replace").strip()


def engine_error(status: int, body: bytes, what: str) -> GrainchainError:
    """The grainchain error for a failed Engine API call (`what` names the call for the message)."""
    message = f"{what}: docker engine answered {status}: {engine_message(body)}"
    if status == 404:
        return SandboxNotFoundError(message, provider=PROVIDER)
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


def pull_error(image: str, detail: str) -> ProviderUnavailableError:
    return ProviderUnavailableError(
        f"docker image {image!r} is not on this engine and cannot be pulled ({detail}); build or load it "
        "first (`docker build`, `docker load`, `docker import`), or pick another SandboxConfig.image",
        provider=PROVIDER,
        retryable=False,
    )


def pull_progress_error(lines: bytes) -> str | None:
    """The error of a POST /images/create progress stream (JSON lines), if it reported one."""
    for line in lines.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("error"):
            return str(event["error"])
    return None


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


# Kills every process whose environment carries the exec marker ($1): stop them all first (no new forks),
# then kill. Runs as its own exec, inside the container, so it sees the container's pids.
KILL_SCRIPT = r"""
for pass in STOP KILL; do
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qx "GRAINCHAIN_EXEC_ID=$1"; then
      kill -s "$pass" "${d#/proc/}" 2>/dev/null
    fi
  done
done
exit 0
"""

# Lists a directory ($1): per entry "<raw mode in hex> <size> <mtime>\t<name>\0", without following links.
LIST_SCRIPT = r"""
cd -- "$1" || exit 44
for f in .* *; do
  case "$f" in .|..) continue ;; esac
  [ -e "$f" ] || [ -L "$f" ] || continue
  printf '%s\t%s\0' "$(stat -c '%f %s %Y' -- "$f")" "$f"
done
"""
STAT_SCRIPT = r"""[ -e "$1" ] || [ -L "$1" ] || exit 44; stat -c '%f %s %Y' -- "$1" """
MKDIR_SCRIPT = r"""[ -d "$1" ] && exit 0; mkdir -p -- "$1" """
DELETE_SCRIPT = r"""[ -e "$1" ] || [ -L "$1" ] || exit 44; rm -rf -- "$1" """
MISSING = 44  # exit code of the scripts above for a path that does not exist


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
    entries = []
    for record in output.split(b"\0"):
        if not record:
            continue
        stat_line, _, name = record.partition(b"\t")
        full = posixpath.join(directory, name.decode("utf-8", "replace"))
        entries.append(file_info_from_stat(full, stat_line.decode()))
    return entries


@dataclass(frozen=True)
class PathStat:
    """What HEAD /containers/{id}/archive says about a path (the link itself, not its target)."""

    name: str
    size: int
    is_directory: bool
    is_symlink: bool
    link_target: str


def parse_path_stat(header: str) -> PathStat:
    data = json.loads(base64.b64decode(header))
    mode = int(data.get("mode", 0))
    return PathStat(
        name=str(data.get("name", "")),
        size=int(data.get("size", 0)),
        is_directory=bool(mode & _GO_MODE_DIR),
        is_symlink=bool(mode & _GO_MODE_SYMLINK),
        link_target=str(data.get("linkTarget", "")),
    )


# -- archives -------------------------------------------------------------------------------------------


def tar_one_file(name: str, data: bytes, mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def untar_first_file(archive: bytes) -> bytes | None:
    """The content of the archive's first member when it is a regular file, else None."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        member = tar.next()
        if member is None or not member.isfile():
            return None
        extracted = tar.extractfile(member)
        return extracted.read() if extracted is not None else None


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
