"""Kill a client mid-operation (SIGKILL at a random moment), then check that nothing was lost.

Provider-agnostic: `crash_runs(provider, setup, script, check)` runs `script` (one operation) in a child
process again and again, kills it at a random delay after the operation started, and asks `check` what the
sandbox holds now: the old state or the new one, never a mix, and `connect()` must work. It returns counts:
runs, kills that landed while the operation ran, data lost (neither old nor new, or unusable), untyped errors
(outside grainchain's error tree, in the child or while checking).

The children are real processes, forked from a *zygote*: one Python process per `crash_runs` that imports
grainchain (and the provider's modules) once and forks a fresh child per run, so that a run costs the
operation, not an interpreter start (~0.5 s). A child has started no thread before its fork. Its markers
(`started`, `done`, an error) come to the parent through the zygote in order; the zygote reaps a child only
when the parent says so, so its pid cannot be reused while the parent may still kill it. The zygote is a
child subreaper: what a killed child started (and left orphaned) is reaped there, as a real init would.

The script is Python run in the child with these names defined:

    CONTEXT      what setup() returned for this run (JSON-able)
    PROVIDER     the provider's name
    Sandbox      grainchain.sync.Sandbox;  SandboxConfig
    connect()    Sandbox.connect(CONTEXT["sandbox_id"], PROVIDER)
    started()    call right before the operation: the kill is timed from here
    done()       call right after it (a kill after done() did not land mid-operation)

The child never closes or detaches: it ends (os._exit) as a killed client would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grainchain.errors import GrainchainError

OLD, NEW = "old", "new"

_ZYGOTE = r"""
import faulthandler, json, os, select, signal, sys, traceback
import grainchain.sync
from grainchain import SandboxConfig
from grainchain.errors import GrainchainError
from grainchain.sync import Sandbox
PROVIDER = sys.argv[1]
for module in (f"grainchain.providers.{PROVIDER}._sync.adapter", f"grainchain.providers.{PROVIDER}.config"):
    try:
        __import__(module)
    except ImportError:
        pass
import ctypes
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
out = sys.stdout
def emit(line):
    out.write(line + "\n")
    out.flush()
emit("ready")
for request in sys.stdin:
    request = json.loads(request)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()  # not in the harness's process group: a kill hits this child only
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # where it hangs, when it does
        marks = os.fdopen(w, "w", buffering=1)
        code = 0
        def started():
            marks.write("started\n")
        def done():
            marks.write("done\n")
        def connect():
            return Sandbox.connect(CONTEXT["sandbox_id"], PROVIDER)
        CONTEXT = request["context"]
        names = {"CONTEXT": CONTEXT, "PROVIDER": PROVIDER, "Sandbox": Sandbox, "SandboxConfig": SandboxConfig,
                 "connect": connect, "started": started, "done": done}
        try:
            exec(compile(request["script"], "<crash child>", "exec"), names)
        except GrainchainError as exc:
            marks.write("typed " + json.dumps(f"{type(exc).__name__}: {exc}") + "\n")
            code = 3
        except BaseException as exc:
            marks.write("untyped " + json.dumps(traceback.format_exc()) + "\n")
            code = 4
        marks.flush()
        os._exit(code)
    os.close(w)
    emit(f"pid {pid}")
    # Forward its marks until it has exited (a process it started may hold the pipe open: no waiting for
    # EOF; WNOWAIT leaves it a zombie, reaped below when the parent says so)
    os.set_blocking(r, False)
    pending, ended = b"", False
    while True:
        readable = select.select([r], [], [], 0.005)[0]
        chunk = None  # None: nothing to read now; b"": end of file
        if readable or ended:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                pass
        pending += chunk or b""
        *lines, pending = pending.split(b"\n")
        for line in lines:
            emit(line.decode())
        if chunk == b"" or (ended and chunk is None):
            break  # all read: the end of the pipe, or the child gone and nothing left in it
        if not ended:
            ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    os.close(r)
    emit("closed")
    sys.stdin.readline()  # "reap": the parent will not signal this pid any more
    _, status = os.waitpid(pid, 0)
    try:  # orphans of that child (it was the only one running): reaped as init would
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    emit(f"exit {status}")
"""


@dataclass
class CrashCounts:
    provider: str
    runs: int = 0
    landed: int = 0  # kills that came while the operation ran (after started(), before done())
    completed: int = 0  # runs whose operation finished before the kill
    lost: int = 0  # checks that found neither the old nor the new state, or an unusable sandbox
    untyped: int = 0  # errors outside grainchain's tree: raised by the child, or while checking
    typed: int = 0  # the child's operation raised a GrainchainError (not killed)
    outcomes: dict[str, int] = field(default_factory=dict)  # what check() found: old / new / ...
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.provider}: {self.runs} runs, {self.landed} kills mid-operation, {self.lost} lost, "
            f"{self.untyped} untyped errors, outcomes {self.outcomes}"
        )


class _Zygote:
    def __init__(self, provider: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, provider],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.buffer = b""
        if self.line(60) != "ready":
            raise RuntimeError("the crash harness's zygote did not start")

    def line(self, timeout: float) -> str:
        """The zygote's next line (read by hand: a buffered reader would hide lines from select())."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no word from the crash child within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the crash harness's zygote died")
            self.buffer += chunk
        text, _, self.buffer = self.buffer.partition(b"\n")
        return text.decode()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class _Run:
    killed: bool = False
    started: float | None = None
    done: float | None = None
    error: tuple[str, str] | None = None  # (typed | untyped, text)


def _one_run(zygote: _Zygote, script: str, context: Any, delay: float | None, timeout: float) -> _Run:
    """Fork a child for one operation; SIGKILL it `delay` seconds after started() (None: never)."""
    zygote.send(json.dumps({"script": script, "context": context}))
    first = zygote.line(timeout)
    assert first.startswith("pid "), first
    pid = int(first.split()[1])
    run = _Run()
    deadline = time.monotonic() + timeout
    try:
        while True:
            wait = deadline - time.monotonic()
            kill_due = run.started is not None and delay is not None and not run.killed
            if kill_due:
                assert run.started is not None
                assert delay is not None
                wait = min(wait, run.started + delay - time.monotonic())
            if wait <= 0:
                if not kill_due:
                    os.kill(pid, signal.SIGUSR1)  # its stacks, on stderr
                    time.sleep(0.5)
                    raise TimeoutError(f"the crash child took more than {timeout} s (stacks on stderr)")
                os.kill(pid, signal.SIGKILL)  # alive or a zombie: not reaped before "reap"
                run.killed = True
                continue
            try:
                text = zygote.line(wait)
            except TimeoutError:
                continue
            if text == "started":
                run.started = time.monotonic()
            elif text == "done":
                run.done = time.monotonic()
            elif text.startswith(("typed ", "untyped ")):
                kind, _, detail = text.partition(" ")
                run.error = (kind, json.loads(detail))
            elif text == "closed":  # the child has ended (its end of the pipe closed with it)
                break
            else:
                raise AssertionError(f"unexpected word from the crash child: {text!r}")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    zygote.send("reap")
    while not zygote.line(timeout).startswith("exit "):
        pass
    return run


def crash_runs(
    provider: str,
    setup: Callable[[int], Any],
    script: str,
    check: Callable[[Any], str],
    *,
    runs: int = 20,
    spread: float = 1.2,
    timeout: float = 60.0,
    seed: int | None = None,
) -> CrashCounts:
    """Run `script` `runs` times, each in a fresh child killed with SIGKILL at a random moment of its
    operation, and check the state after each.

    setup(i) prepares run i (in this process) and returns the child's CONTEXT; check(context) connects and
    returns OLD or NEW (what it found); anything else it returns, an AssertionError or a GrainchainError
    counts as data lost, another exception also as an untyped error. The first run is not killed: it
    measures how long the operation takes; the kills of the others come uniformly within `spread` times
    the median duration of the operations that finished so far (so most land mid-operation)."""
    rng = random.Random(seed)
    counts = CrashCounts(provider)
    zygote = _Zygote(provider)
    durations: list[float] = []  # of the operations that finished: the kills aim within their median
    try:
        for i in range(runs):
            context = setup(i)
            aim = sorted(durations)[len(durations) // 2] if durations else None
            delay = None if aim is None else rng.uniform(0, aim * spread)
            run = _one_run(zygote, script, context, delay, timeout)
            counts.runs += 1
            if run.started is not None and run.done is not None:
                durations.append(max(run.done - run.started, 0.001))
            elif aim is None:
                raise AssertionError(f"the operation failed without a kill: {run.error}")
            if run.killed and run.started is not None and run.done is None:
                counts.landed += 1
            elif run.done is not None:
                counts.completed += 1
            if run.error is not None:
                if run.error[0] == "untyped":
                    counts.untyped += 1
                    counts.problems.append(f"run {i}: the child raised an untyped error: {run.error[1]}")
                else:
                    counts.typed += 1
                    counts.problems.append(f"run {i}: the child raised {run.error[1]}")
            try:
                outcome = check(context)
            except AssertionError as exc:
                outcome = f"check failed: {exc}"
            except GrainchainError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # counted, not hidden
                counts.untyped += 1
                outcome = f"untyped {type(exc).__name__}: {exc}"
            key = outcome if outcome in (OLD, NEW) else "lost"
            counts.outcomes[key] = counts.outcomes.get(key, 0) + 1
            if outcome not in (OLD, NEW):
                counts.lost += 1
                where = "mid-operation" if run.killed and run.done is None else "after the operation"
                counts.problems.append(f"run {i} (killed {where}): {outcome}")
    finally:
        zygote.close()
    return counts
