"""Provider-neutral probes from inside a sandbox, written in POSIX shell (coreutils or busybox): which of a
list of processes still run, a background counter that shows whether anything of the sandbox runs, what a
command sees at a path, and a manifest of a tree (names, kinds, modes, sizes, hashes, link targets)."""

from __future__ import annotations

import base64
import shlex
import time
from typing import Any

# Writes the pids it finds alive, one "alive PID" line each.
GONE_CHECK = 'for p in $(cat {file}); do if kill -0 "$p" 2>/dev/null; then echo "alive $p"; fi; done'


def survivors(sandbox: Any, pid_file: str, within: float = 5.0) -> str:
    """Processes listed in pid_file that are still alive after `within` seconds ("" when all are gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = str(sandbox.execute(GONE_CHECK.format(file=shlex.quote(pid_file))).stdout)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


# A shell that starts a child, a grandchild (in a subshell) and, where the image has `setsid`, a child in a
# session of its own (as daemons leave their process group), each recording its pid in {pids}. An adapter
# that kills only the command, or only its process group, leaves some of them running.
FAMILY = (
    "echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; (sleep 60 & echo $! >> {pids}; wait) & "
    "if command -v setsid >/dev/null; then setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & fi; "
    "echo family-started; wait"
)


def family_size(sandbox: Any) -> int:
    """How many pids FAMILY records in this sandbox (4 with `setsid`, 3 without)."""
    return 4 if sandbox.execute("command -v setsid").return_code == 0 else 3


def wait_for_lines(sandbox: Any, path: str, lines: int, within: float = 10.0) -> None:
    """Until the file at `path` has `lines` lines (e.g. pids written by processes starting)."""
    deadline = time.monotonic() + within
    while True:
        shown = str(sandbox.execute(f"cat {shlex.quote(path)} 2>/dev/null").stdout)
        if shown.count("\n") >= lines:
            return
        assert time.monotonic() < deadline, f"{path} has {shown.count(chr(10))} of {lines} lines: {shown!r}"
        time.sleep(0.05)


# A background counter: it outlives the command that starts it and writes each value whole, every 50 ms.
# It names its directory by path at every write, not through its working directory: an adapter that swaps
# the workspace for a copy (a close that keeps it, a remount) would otherwise hide a survivor writing into
# the old, deleted directory.
COUNTER = (
    'd="$(pwd)"; (i=0; while :; do i=$((i+1)); echo $i > "$d/{name}.tmp"; mv "$d/{name}.tmp" "$d/{name}"; '
    "sleep 0.05; done) >/dev/null 2>&1 &"
)


def start_counter(sandbox: Any, name: str = "counter", session: bool = False) -> None:
    """Start COUNTER; with `session`, in a session of its own (`setsid`) where the image has it."""
    command = COUNTER.format(name=name)
    if session and sandbox.execute("command -v setsid").return_code == 0:
        command = f"setsid sh -c {shlex.quote(command)}"
    sandbox.execute(command)
    counter_reaches(sandbox, 2, name=name)


def counter_value(sandbox: Any, name: str = "counter") -> int:
    shown = str(sandbox.execute(f"cat {name} 2>/dev/null").stdout).strip()
    return int(shown) if shown.isdigit() else 0


def counter_reaches(sandbox: Any, at_least: int, within: float = 10.0, name: str = "counter") -> int:
    deadline = time.monotonic() + within
    while True:
        value = counter_value(sandbox, name)
        if value >= at_least:
            return value
        assert time.monotonic() < deadline, f"the counter stays at {value}, below {at_least}"
        time.sleep(0.05)


def counter_is_still(sandbox: Any, name: str = "counter", wait: float = 0.6) -> tuple[int, int]:
    """The counter's value, then again `wait` seconds later (equal when nothing of the sandbox runs)."""
    before = counter_value(sandbox, name)
    time.sleep(wait)
    return before, counter_value(sandbox, name)


def view(sandbox: Any, path: str) -> bytes | None:
    """The bytes a command in the sandbox reads at `path`, or None when it reads no regular file there."""
    quoted = shlex.quote(path)
    result = sandbox.execute(
        f"if [ -f {quoted} ] && [ -r {quoted} ]; then base64 < {quoted}; else echo NONE; fi"
    )
    shown = str(result.stdout).strip()
    return None if shown == "NONE" else base64.b64decode(shown)


def exists(sandbox: Any, path: str) -> bool:
    return bool(
        sandbox.execute(f"test -e {shlex.quote(path)} || test -L {shlex.quote(path)}").return_code == 0
    )


MANIFEST = r"""cd {dir} && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r p; do
  if [ -L "$p" ]; then echo "link|$p|$(readlink "$p")"
  elif [ -d "$p" ]; then echo "dir|$p|$(stat -c %a "$p")"
  else echo "file|$p|$(stat -c %a "$p")|$(wc -c < "$p" | tr -d ' ')|$(sha256sum < "$p" | cut -d' ' -f1)"
  fi
done"""


def manifest(sandbox: Any, directory: str) -> list[str]:
    """Every entry under `directory` (hidden ones too) with its kind, permission bits, size and SHA-256
    (files) or target (links), sorted: two equal manifests are the same tree, byte for byte."""
    result = sandbox.execute(MANIFEST.format(dir=shlex.quote(directory)))
    assert result.return_code == 0, result.stderr
    return str(result.stdout).splitlines()
