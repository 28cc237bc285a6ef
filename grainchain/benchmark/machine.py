"""What the numbers were measured on: enough to tell whether two runs are comparable."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import httpx

from grainchain import __version__
from grainchain.benchmark.results import Machine
from grainchain.errors import GrainchainError
from grainchain.providers.docker import _engine as dk


def _first_line_with(path: str, key: str, separator: str = ":") -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            name, sep, value = line.partition(separator)
            if sep and name.strip() == key:
                return value.strip().strip('"')
    return None


def _memory_bytes() -> int | None:
    value = _first_line_with("/proc/meminfo", "MemTotal")  # "24568516 kB"
    with contextlib.suppress(ValueError, AttributeError, IndexError):
        return int(value.split()[0]) * 1024 if value else None
    return None


def _git_commit() -> str | None:
    """The checkout's commit when grainchain runs from one (an installed wheel has none); "-dirty" when
    the work tree has uncommitted changes, so the numbers belong to no commit exactly."""
    package_dir = Path(__file__).resolve().parents[1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "-C", str(package_dir.parent), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if done.returncode == 0 and (package_dir.parent / ".git").exists():
            return done.stdout.strip() or None
    return None


def docker_engine_version() -> str | None:
    """The engine's version (API version in brackets), or None when no engine answers."""
    try:
        endpoint = dk.engine_endpoint()
    except GrainchainError:
        return None
    if endpoint.uds and not os.path.exists(endpoint.uds):
        return None
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    try:
        with httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=5) as client:
            data = client.get("/version").json()
    except (httpx.HTTPError, OSError, ValueError):
        return None
    return f"{data.get('Version')} (API {data.get('ApiVersion')})"


def describe_machine(with_docker: bool) -> Machine:
    return Machine(
        cpu_count=os.cpu_count(),
        cpu_model=_first_line_with("/proc/cpuinfo", "model name") or platform.processor() or None,
        memory_bytes=_memory_bytes(),
        os=_first_line_with("/etc/os-release", "PRETTY_NAME", "=") or platform.system(),
        kernel=platform.release(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        grainchain_version=__version__,
        grainchain_commit=_git_commit(),
        docker_engine=docker_engine_version() if with_docker else None,
    )
