"""execute() of the local provider, for both clients: scrubbed environment, exit codes, timeouts that leave no
process behind, streaming, the output cap, argument errors and (async) cancellation.

Every test runs real shell commands. Process checks read /proc directly; a killed orphan may stay a zombie
(state Z) when PID 1 does not reap, which counts as gone.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from _local import run_unisolated
from _procs import alive, env_of, eventually, pids_in, sandbox_pids, stat_fields, wait_gone
from _support import close

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.errors import (
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    OutputLimitExceededError,
)


@pytest.fixture(autouse=True)
def _unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests look at sandboxes from the host (host paths and pids): plain host processes.
    tests/test_local_isolation.py and the conformance suite cover isolation="namespaces"."""
    run_unisolated(tmp_path, monkeypatch)


# -- environment and working directory --------------------------------------------------------------


async def test_environment_is_scrubbed(make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "hunter2")
    sandbox = await make_sandbox()
    result = await sandbox.execute("env")
    env = env_of(result.stdout)
    assert "MY_SECRET" not in env
    assert "hunter2" not in result.stdout
    workspace = (await sandbox.execute("pwd -P")).stdout.strip()
    # the sandbox's Python environment (made on first use), its shims, the minimal PATH
    venv, shims, minimal = env["PATH"].split(":", 2)
    assert (venv, env["VIRTUAL_ENV"]) == (f"{workspace}/.venv/bin", f"{workspace}/.venv")
    assert shims.endswith("/bin")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert sorted(os.listdir(shims)) == sorted(
        f"{n}{v}" for n in ("pip", "python") for v in ("", "3", version)
    )
    assert minimal == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"] == workspace
    # nothing else of the host leaks: only the minimal variables, the markers and what the shell adds
    allowed = {"PATH", "LANG", "HOME", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_", "VIRTUAL_ENV"}
    allowed |= {"GRAINCHAIN_SANDBOX_ID", "GRAINCHAIN_EXEC_ID", "GRAINCHAIN_STATE_TAG"}
    assert set(env) <= allowed, set(env) - allowed
    assert os.path.isdir(env["TMPDIR"])


async def test_config_and_call_environment(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(environment_vars={"ONLY_CONFIG": "c", "BOTH": "config"}))
    result = await sandbox.execute(
        'echo "$ONLY_CONFIG $BOTH $ONLY_CALL"', environment={"BOTH": "call", "ONLY_CALL": "x y"}
    )
    assert result.stdout == "c call x y\n"
    # the call's environment is for that call only
    assert (await sandbox.execute('echo "$BOTH ${ONLY_CALL-unset}"')).stdout == "config unset\n"


async def test_commands_run_in_their_own_process_group(sandbox: Any) -> None:
    result = await sandbox.execute("echo $$; cut -d' ' -f5,6 /proc/$$/stat")
    shell, ids = result.stdout.splitlines()
    pgrp, sid = ids.split()
    assert pgrp == sid == shell  # a new session, so also a new process group led by the shell
    assert int(pgrp) != os.getpgrp()


async def test_working_dir_relative_to_workspace(sandbox: Any) -> None:
    workspace = (await sandbox.execute("pwd -P")).stdout.strip()
    await sandbox.execute("mkdir -p sub/dir")
    assert (await sandbox.execute("pwd -P", working_dir="sub/dir")).stdout.strip() == f"{workspace}/sub/dir"
    absolute = f"{workspace}/sub"
    assert (await sandbox.execute("pwd -P", working_dir=absolute)).stdout.strip() == absolute


async def test_config_working_directory(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(working_directory="proj"))
    home = (await sandbox.execute('echo "$HOME"')).stdout.strip()
    assert (await sandbox.execute("pwd -P")).stdout.strip() == f"{home}/proj"
    await sandbox.execute("mkdir inner")
    # the call's working_dir is relative to the configured one; ".." may climb back to the workspace
    assert (await sandbox.execute("pwd -P", working_dir="inner")).stdout.strip() == f"{home}/proj/inner"
    assert (await sandbox.execute("pwd -P", working_dir="..")).stdout.strip() == home


# -- results --------------------------------------------------------------------------------------------


async def test_exit_code_and_stderr_are_a_result(sandbox: Any) -> None:
    result = await sandbox.execute("echo out; echo err >&2; exit 7")
    assert (result.return_code, result.success) == (7, False)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert result.command == "echo out; echo err >&2; exit 7"
    assert result.execution_time >= 0
    ok = await sandbox.execute("true")
    assert (ok.return_code, ok.success, ok.stdout, ok.stderr) == (0, True, "", "")


async def test_signal_and_missing_command_exit_codes(sandbox: Any) -> None:
    assert (await sandbox.execute("kill -9 $$")).return_code == 137
    missing = await sandbox.execute("no-such-command-xyz")
    assert missing.return_code == 127
    assert "no-such-command-xyz" in missing.stderr


async def test_invalid_utf8_is_replaced(sandbox: Any) -> None:
    chunks: list[str] = []
    result = await sandbox.execute(r"printf '\377\376ok\n'; printf '\200' >&2", on_stdout=chunks.append)
    assert result.stdout == "\ufffd\ufffdok\n"
    assert result.stderr == "\ufffd"
    assert "".join(chunks) == "\ufffd\ufffdok\n"


# -- timeouts ---------------------------------------------------------------------------------------------


async def test_timeout_raises_with_partial_output_and_kills(sandbox: Any) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute("echo $$; echo partial >&2; sleep 30", timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3, elapsed
    err = caught.value
    shell = int(err.stdout.split()[0])
    assert err.stderr == "partial\n"
    assert (err.timeout, err.command) == (1, "echo $$; echo partial >&2; sleep 30")
    assert (err.provider, err.operation) == ("local", "execute")
    assert not alive(shell)  # killed and reaped before the error was raised


ESCAPES = """
sleep 30 & echo "group $!"
env -i /bin/sleep 30 & echo "bare $!"
setsid sleep 30 & echo "session $!"
(sleep 30 & echo "orphan $!")
(setsid sleep 30 & echo "daemon $!")
sleep 0.2; echo "shell $$"; echo ready
sleep 30
"""


async def test_timeout_kills_children_that_left_group_or_parent(sandbox: Any) -> None:
    """Background children (one without any environment, so without the marker), a setsid child, a
    double-forked orphan and a setsid daemon: all die with it."""
    text: list[str] = []
    seen: dict[str, tuple[int, int, int]] = {}  # label -> (ppid, pgrp, sid), read while they run
    bare_environ: list[bytes] = []

    def on_stdout(chunk: str) -> None:
        text.append(chunk)
        if "ready" in "".join(text) and not seen:
            for label, pid in pids_in("".join(text)).items():
                seen[label] = stat_fields(pid)
            with open(f"/proc/{pids_in(''.join(text))['bare']}/environ", "rb") as f:
                bare_environ.append(f.read())

    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute(ESCAPES, timeout=1, on_stdout=on_stdout)
    pids = pids_in(caught.value.stdout)
    assert set(pids) == {"group", "bare", "session", "orphan", "daemon", "shell"}
    shell = pids["shell"]
    # the children really escaped the way they are meant to, so the test proves something
    ppid, pgrp, sid = 0, 1, 2
    assert seen["group"][pgrp] == shell  # plain background child: same group
    assert seen["bare"][pgrp] == shell  # same group, but no marker to find it by
    assert bare_environ == [b""]
    assert seen["session"][sid] != shell  # setsid: own session and group
    assert seen["session"][pgrp] != shell
    assert seen["orphan"][ppid] != shell  # double fork: reparented, still in the group
    assert seen["orphan"][pgrp] == shell
    assert seen["daemon"][ppid] != shell  # double fork + setsid: neither parent nor group nor session
    assert seen["daemon"][sid] != shell
    # gone right after the error, before the sandbox closes
    survivors = wait_gone(pids.values(), within=0.5)
    assert not survivors, survivors


async def test_config_timeout_is_the_default(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(timeout=1))
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute("sleep 30")
    assert time.monotonic() - started < 3
    assert caught.value.timeout == 1
    # a call's timeout beats the default
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await sandbox.execute("sleep 30", timeout=0.3)
    assert time.monotonic() - started < 0.9
    assert caught.value.timeout == 0.3


async def test_background_child_does_not_hold_execute(make_sandbox: Any) -> None:
    sandbox = await make_sandbox()
    started = time.monotonic()
    result = await sandbox.execute("sleep 100 & echo $!; echo done")
    assert time.monotonic() - started < 0.5
    child_s, done = result.stdout.split()
    assert (done, result.return_code) == ("done", 0)
    child = int(child_s)
    assert alive(child)  # it outlives the command ...
    await close(sandbox)
    assert not wait_gone([child], within=0.5)  # ... but not the sandbox


# -- streaming ----------------------------------------------------------------------------------------------


async def test_streaming_delivers_chunks_while_running(sandbox: Any) -> None:
    arrivals: list[tuple[float, str]] = []
    errors: list[str] = []

    def on_stdout(chunk: str) -> None:
        arrivals.append((time.monotonic(), chunk))

    command = "echo one; sleep 0.3; echo two >&2; echo three; sleep 0.3; echo four"
    result = await sandbox.execute(command, on_stdout=on_stdout, on_stderr=errors.append)
    ended = time.monotonic()
    assert "".join(c for _, c in arrivals) == "one\nthree\nfour\n" == result.stdout
    assert "".join(errors) == "two\n" == result.stderr
    assert arrivals[0][1] == "one\n"
    assert arrivals[0][0] < ended - 0.45  # arrived while the command still had 0.6 s to go
    assert len(arrivals) >= 3


async def test_streaming_keeps_multibyte_characters_whole(sandbox: Any) -> None:
    chunks: list[str] = []
    # é (2 bytes) and 😀 (4 bytes), each split across two writes with a pause between them
    command = r"printf '\303'; sleep 0.2; printf '\251 \360\237'; sleep 0.2; printf '\230\200\n'"
    result = await sandbox.execute(command, on_stdout=chunks.append)
    assert result.stdout == "é 😀\n"
    assert "".join(chunks) == "é 😀\n"
    assert not any("\ufffd" in c for c in chunks)


async def test_callback_error_propagates_and_kills(sandbox: Any) -> None:
    pids: list[int] = []

    def on_stdout(chunk: str) -> None:
        pids.extend(int(p) for p in chunk.split())
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        await sandbox.execute("sleep 30 & echo $! $$; sleep 30", on_stdout=on_stdout)
    assert len(pids) == 2
    assert not wait_gone(pids, within=0.5)


# -- output cap ----------------------------------------------------------------------------------------


async def test_output_limit_kills_quickly_with_bounded_memory(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(output_limit="1MB"))
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(OutputLimitExceededError) as caught:
            await sandbox.execute("echo $$ >&2; exec head -c 50000000 /dev/zero")
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = caught.value
    assert elapsed < 3, elapsed
    assert err.limit == 1_000_000
    assert len(err.stdout) + len(err.stderr) == 1_000_000  # what fitted is kept, nothing more
    assert peak < 16_000_000, peak  # 50 MB went through; only the capped output was held
    head = int(err.stderr.split()[0])
    assert not wait_gone([head], within=0.5)
    assert (err.provider, err.operation) == ("local", "execute")


async def test_output_limit_counts_stderr_and_is_exclusive(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(output_limit="1MB"))
    exact = await sandbox.execute("head -c 600000 /dev/zero; head -c 400000 /dev/zero >&2")
    assert (len(exact.stdout), len(exact.stderr), exact.return_code) == (600_000, 400_000, 0)
    with pytest.raises(OutputLimitExceededError):
        await sandbox.execute("head -c 600000 /dev/zero; head -c 400001 /dev/zero >&2")


# -- argument errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "   "])
async def test_empty_command(sandbox: Any, command: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.execute(command)
    assert caught.value.argument == "command"
    assert "command" in str(caught.value)


@pytest.mark.parametrize("timeout", [0, -1])
async def test_non_positive_timeout(sandbox: Any, timeout: float) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.execute("true", timeout=timeout)
    assert caught.value.argument == "timeout"


async def test_bad_environment_name(sandbox: Any) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.execute("true", environment={"1BAD": "x"})
    assert caught.value.argument == "environment"
    assert "1BAD" in str(caught.value)


@pytest.mark.parametrize("working_dir", ["..", "/etc", "sub/../../..", "escape"])
async def test_working_dir_goes_where_cd_goes(sandbox: Any, working_dir: str) -> None:
    """A call's working_dir is any directory a command could `cd` to: without isolation, host directories
    too (the sandbox's commands run on the host), and through a symlink as `cd` follows it."""
    await sandbox.execute("mkdir sub; ln -s /etc escape")
    shown = (await sandbox.execute("pwd -P", working_dir=working_dir)).stdout
    assert shown == (await sandbox.execute(f"cd {working_dir} && pwd -P")).stdout


async def test_missing_working_dir_is_an_error(sandbox: Any) -> None:
    with pytest.raises(GrainchainError):
        await sandbox.execute("true", working_dir="does/not/exist")


# -- cancellation (async client only) -------------------------------------------------------------------


async def test_cancel_kills_the_tree() -> None:
    async with AsyncSandbox("local") as sandbox:
        text: list[str] = []
        task = asyncio.create_task(
            sandbox.execute("setsid sleep 30 & echo $!; echo $$; sleep 30", on_stdout=text.append)
        )
        await eventually(lambda: len("".join(text).split()) == 2)
        pids = [int(p) for p in "".join(text).split()]
        assert all(alive(p) for p in pids)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not wait_gone(pids, within=2.0)
        assert not sandbox_pids(sandbox.sandbox_id)


async def test_concurrent_commands_run_in_parallel() -> None:
    async with AsyncSandbox("local") as sandbox:
        started = time.monotonic()
        results = await asyncio.gather(*(sandbox.execute(f"sleep 0.3; echo {i}") for i in range(4)))
        assert time.monotonic() - started < 0.9
        assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]


async def test_cancel_is_not_lost_while_output_flows() -> None:
    """A cancel() that lands while output is ready must still cancel (asyncio.wait_for on Python 3.11
    swallowed about every other one, and the command ran on)."""
    async with AsyncSandbox("local", SandboxConfig(output_limit="100MB")) as sandbox:
        for _ in range(20):
            task = asyncio.create_task(sandbox.execute("yes"))
            await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not wait_gone(sandbox_pids(sandbox.sandbox_id), within=0.5)


async def test_wait_for_timeout_kills_the_tree() -> None:
    async with AsyncSandbox("local") as sandbox:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sandbox.execute("sleep 30 & sleep 30"), 0.3)
        assert time.monotonic() - started < 1
        assert not wait_gone(sandbox_pids(sandbox.sandbox_id), within=0.5)


async def test_missing_working_dir_is_reported_as_not_found(sandbox):
    with pytest.raises(FileNotFoundInSandboxError, match="missing"):
        await sandbox.execute("pwd", working_dir="missing")
    await sandbox.make_directory("there")
    assert (await sandbox.execute("pwd", working_dir="there")).stdout.rstrip().endswith("/there")
