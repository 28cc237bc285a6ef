"""Process probes for the command tests; they read /proc directly, independent of grainchain's own code."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator


def stat_fields(pid: int) -> tuple[int, int, int]:
    """(ppid, pgrp, session) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a killed orphan may stay a zombie when PID 1 does
    not reap; it runs nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: Iterable[int], within: float) -> list[int]:
    """The pids still alive after waiting up to `within` seconds for them to die."""
    pending = list(pids)
    deadline = time.monotonic() + within
    while True:
        pending = [p for p in pending if alive(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.01)


async def eventually(condition: Callable[[], object], within: float = 5) -> None:
    """Wait (yielding to the event loop) until `condition()` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.01)


def process_environments() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, environment entries) of every process we may read."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                yield int(name), f.read().split(b"\0")
        except OSError:
            continue


def sandbox_pids(sandbox_id: str) -> list[int]:
    """Live processes started by the sandbox `sandbox_id` (they carry GRAINCHAIN_SANDBOX_ID=<id>)."""
    entry = f"GRAINCHAIN_SANDBOX_ID={sandbox_id}".encode()
    return [pid for pid, environ in process_environments() if entry in environ and alive(pid)]


def pids_in(text: str) -> dict[str, int]:
    """{label: pid} from lines such as "daemon 1234"."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


def env_of(text: str) -> dict[str, str]:
    """The output of `env` as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
