"""A fork bomb in a default local sandbox (no pids_limit given). The bomb is bounded by its own depth
(8191 processes at most) and every process of it is killed from the host at the end, so that a vulnerable
grainchain cannot take the machine down during the test."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from _attacks import (
    bomb_ceiling,
    bomb_namespace,
    bomb_script,
    host_can_spawn,
    isolated_sandbox,
    marked_pids,
    pids_in_namespace,
    sweep,
    tagged_pids,
)

from grainchain.errors import CommandTimeoutError

WATCH = 12.0  # seconds at most to watch the bomb grow
MIN_BOMB = 32  # fewer processes than this: the bomb did not run, the test proves nothing
SETTLED = 1.0  # after fork failures, the bomb counts as contained once its count did not grow for this long


class Bomb:
    """A bomb in a sandbox as the host sees it: its pid namespace, live processes, peak, and the problems."""

    def __init__(self, sandbox: Any, stdout: Callable[[], str], stderr: Callable[[], str]) -> None:
        self.tag = uuid.uuid4().hex
        self.stdout = stdout
        self.stderr = stderr
        sandbox.upload_file("bomb.sh", bomb_script(self.tag))
        # the sandbox's own processes before the bomb (its pid namespace may hold some): not the bomb's
        self.own_namespace = sandbox.execute("readlink /proc/self/ns/pid").stdout.strip()
        own = pids_in_namespace(self.own_namespace) + marked_pids(sandbox.sandbox_id)
        self.baseline = frozenset(own)
        self.namespace: str | None = None
        self.peak = 0
        self.problems: list[str] = []

    def live(self) -> set[int]:
        """The bomb's processes while it forks: those in its pid namespace (the sandbox's until the bomb has
        printed its own) but the sandbox's own ones."""
        self.namespace = self.namespace or bomb_namespace(self.stdout())
        return set(pids_in_namespace(self.namespace or self.own_namespace)) - self.baseline

    def everything(self) -> set[int]:
        return self.live() | set(tagged_pids(self.tag))

    def watch(self, running: Callable[[], bool] = lambda: True) -> None:
        """Watch the bomb grow, until it exceeds the ceiling (the host is at risk: no need to watch
        further), is contained (forks fail and its count stopped growing), stops running, or WATCH ends."""
        ceiling = bomb_ceiling()
        started = last_growth = last_spawn = time.monotonic()
        while time.monotonic() - started < WATCH and running():
            count = len(self.live())
            if count > self.peak:
                self.peak, last_growth = count, time.monotonic()
            if time.monotonic() - last_spawn > 0.5:  # not every sample: spawning costs the bomb CPU
                spawn = host_can_spawn()
                if spawn is None or spawn > 3:
                    self.problems.append(f"the host could not start a process within 3 s (took {spawn})")
                    return
                last_spawn = time.monotonic()
            if self.peak > ceiling:
                self.problems.append(f"the bomb reached {self.peak} processes (ceiling {ceiling})")
                return
            if "fork" in self.stderr().lower() and time.monotonic() - last_growth > SETTLED:
                return
            time.sleep(0.1)

    def check_started(self) -> None:
        if self.peak < MIN_BOMB:
            self.problems.append(f"the bomb did not run: it never had more than {self.peak} processes")

    def check_gone(self, after: str) -> None:
        """No process of the bomb (tagged in its environment, or in its pid namespace) runs 2 s after
        `after`: each is gone or dying (SIGKILL pending: it ends when next scheduled, which on a busy 2-vCPU
        VM can take a while for thousands of them), and the dying ones are gone 10 s later."""
        deadline = time.monotonic() + 2
        while (left := self.everything()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running := [pid for pid in left if not _dying(pid)]:
            shown = ", ".join(_describe(pid) for pid in sorted(running)[:5])
            self.problems.append(f"{len(running)} bomb processes still running 2 s after {after}: {shown}")
        deadline = time.monotonic() + 10
        while (left := self.everything()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            shown = ", ".join(_describe(pid) for pid in sorted(left)[:5])
            self.problems.append(f"{len(left)} bomb processes still alive 12 s after {after}: {shown}")

    def sweep(self) -> int:
        return sweep(self.everything)


def _dying(pid: int) -> bool:
    """SIGKILL is pending for the process (or it is gone already): it runs nothing more of its own."""
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = dict(line.split(":", 1) for line in f if line.startswith(("SigPnd", "ShdPnd")))
    except OSError:
        return True
    return any(int(mask, 16) & (1 << (signal.SIGKILL - 1)) for mask in masks.values())


def _describe(pid: int) -> str:
    """pid, state and name of a process as /proc shows it (for a failure message)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            name, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
        return f"{pid} {rest.split()[0]} {name}"
    except (OSError, IndexError):
        return f"{pid} (gone)"


def test_fork_bomb_in_background_is_contained() -> None:
    """Starts a fork bomb with start_process in a default sandbox, then kills it with handle.kill(). A
    vulnerable grainchain (no default pids limit) lets the bomb grow towards the host's pid_max, or kill()
    is slow or leaves some of its processes running."""
    with isolated_sandbox() as sandbox:
        streams: dict[str, Any] = {}
        bomb = Bomb(sandbox, lambda: streams["handle"].stdout, lambda: streams["handle"].stderr)
        handle = streams["handle"] = sandbox.start_process("sh bomb.sh")
        try:
            bomb.watch()
            bomb.check_started()
            started = time.monotonic()
            handle.kill()
            took = time.monotonic() - started
            if took > 2:
                bomb.problems.append(f"handle.kill() took {took:.1f}s")
            bomb.check_gone("kill()")
        finally:
            swept = bomb.sweep()
    assert not bomb.problems, (
        f"fork bomb in the background (peak {bomb.peak}, {swept} swept): {bomb.problems}"
    )


def test_fork_bomb_in_execute_times_out_cleanly() -> None:
    """Runs a fork bomb with execute(timeout=2) in a default sandbox. A vulnerable grainchain lets it grow
    towards pid_max, raises late or not at all, or leaves bomb processes running after CommandTimeoutError."""
    outcome: dict[str, Any] = {}
    out: list[str] = []
    err: list[str] = []
    with isolated_sandbox() as sandbox:
        bomb = Bomb(sandbox, lambda: "".join(out), lambda: "".join(err))

        def run() -> None:
            started = time.monotonic()
            try:
                outcome["result"] = sandbox.execute(
                    "sh bomb.sh", timeout=2, on_stdout=out.append, on_stderr=err.append
                )
            except Exception as exc:  # judged below
                outcome["error"] = exc
            outcome["took"] = time.monotonic() - started

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            bomb.watch(running=thread.is_alive)
            bomb.check_started()
            thread.join(timeout=10)
            if thread.is_alive():
                bomb.problems.append("execute(timeout=2) had not returned after 10 s more")
            elif not isinstance(outcome.get("error"), CommandTimeoutError):
                bomb.problems.append(
                    f"execute returned {outcome.get('result') or outcome.get('error')!r:.200}"
                )
            elif outcome["took"] > 5:
                bomb.problems.append(f"CommandTimeoutError came after {outcome['took']:.1f}s (timeout 2 s)")
            bomb.check_gone("the timeout")
        finally:
            swept = bomb.sweep()
            thread.join(timeout=30)
    assert not bomb.problems, (
        f"fork bomb in execute(timeout=2) (peak {bomb.peak}, {swept} swept): {bomb.problems}"
    )
