"""Command plumbing every provider shares (flavour-free): the environment markers that tag a sandbox's
processes, and the one step that turns how a command ended into its result or its error.

The async parts (driving a started command, background handles, the registry of live handles) are in
grainchain/_async/commands.py and grainchain/_async/process.py.
"""

from __future__ import annotations

from grainchain._output import OutputCollector, memory_limit_error
from grainchain.models import ExecutionResult

# Every process a sandbox starts carries these; tree kills and leak checks look for them.
SANDBOX_MARKER = "GRAINCHAIN_SANDBOX_ID"
EXEC_MARKER = "GRAINCHAIN_EXEC_ID"

# For providers that reach their sandbox only through commands (e2b, modal): `sh -c SCRIPT sh LINE` kills
# every process whose environment has the line LINE (one command's `GRAINCHAIN_EXEC_ID=<id>`), stopped
# first so that none forks meanwhile, then killed.
KILL_MARKED_SCRIPT = r"""
id="$1"
for round in 1 2 3 4 5; do
  pids=""
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF -e "$id" && pids="$pids $p"
  done
  [ -z "$pids" ] && exit 0
  kill -s STOP $pids 2>/dev/null
  kill -s KILL $pids 2>/dev/null
done
"""

# For the same providers: `sh -c SCRIPT sh SANDBOX_LINE` prints "pid<TAB>command line" for every live process
# of the sandbox (SANDBOX_LINE: `GRAINCHAIN_SANDBOX_ID=<id>`) that a command started (it carries an exec
# marker; the helper itself and its children carry none): what restore_snapshot(if_processes_running=
# "refuse") reports. A zombie's environ reads empty: only processes that still run are listed.
LIST_MARKED_SCRIPT = r"""
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = "$$" ] && continue
  env=$(tr '\0' '\n' 2>/dev/null <"$d/environ") || continue
  printf '%s\n' "$env" | grep -qxF -e "$1" || continue
  printf '%s\n' "$env" | grep -q '^GRAINCHAIN_EXEC_ID=' || continue
  printf '%s\t%s\n' "$p" "$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")"
done
exit 0
"""


def listed_processes(output: str) -> list[str]:
    """LIST_MARKED_SCRIPT's output as restore_snapshot's ProcessesRunningError shows it: "pid N: command"."""
    found = []
    for line in output.splitlines():
        pid, _, args = line.partition("\t")
        if pid.strip().isdigit():
            found.append(f"pid {pid.strip()}: {args.strip() or '?'}")
    return found


def settle(
    command: str,
    output: OutputCollector,
    *,
    exit_code: int | None,
    elapsed: float,
    timeout: float | None = None,
    oom_killed: bool = False,
    memory_limit: int = 0,
    provider: str = "",
) -> ExecutionResult:
    """What a command that is over becomes, the same for every provider and for execute() and wait():

    * more output than the collector's limit: OutputLimitExceededError with what fitted (whatever else);
    * `exit_code` None, i.e. it did not end by itself but was killed at its deadline: CommandTimeoutError
      after `timeout` seconds, with the partial stdout/stderr;
    * a non-zero exit while the kernel OOM-killed a process of the sandbox (`oom_killed`, the provider's
      evidence): MemoryLimitExceededError naming `memory_limit` and the provider;
    * otherwise its ExecutionResult, a non-zero exit included.
    """
    if output.overflowed:
        raise output.overflow_error(command)
    if exit_code is None:
        if timeout is None:
            raise ValueError(f"command {command!r} has neither an exit code nor a timeout it was killed at")
        raise output.timeout_error(command, timeout)
    result = output.result(command, exit_code, elapsed)
    if exit_code != 0 and oom_killed:
        raise memory_limit_error(result, memory_limit, provider)
    return result
