"""start_process() of the local provider, for both clients: the handle (pid, output so far, wait, kill),
callbacks, the output cap, and that closing the sandbox kills what still runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from _local import run_unisolated
from _procs import alive, eventually, pids_in, stat_fields, wait_gone
from _support import close

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.errors import (
    CommandTimeoutError,
    InvalidArgumentError,
    OutputLimitExceededError,
)


@pytest.fixture(autouse=True)
def _unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests look at sandboxes from the host (host paths and pids): plain host processes.
    tests/test_local_isolation.py and the conformance suite cover isolation="namespaces"."""
    run_unisolated(tmp_path, monkeypatch)


async def wait_for_output(handle: Any, text: str) -> None:
    await eventually(lambda: text in handle.stdout)


async def test_handle_shows_output_so_far_then_the_result(sandbox: Any) -> None:
    handle = await sandbox.start_process("echo first; echo oops >&2; sleep 0.4; echo second; exit 3")
    assert handle.pid > 0
    assert handle.command == "echo first; echo oops >&2; sleep 0.4; echo second; exit 3"
    await wait_for_output(handle, "first\n")
    assert handle.is_running
    assert handle.return_code is None
    assert handle.stdout == "first\n"  # the rest is not written yet
    assert alive(handle.pid)
    result = await handle.wait()
    assert (result.return_code, result.success) == (3, False)
    assert (result.stdout, result.stderr) == ("first\nsecond\n", "oops\n")
    assert not handle.is_running
    assert handle.return_code == 3
    assert (await handle.wait()).stdout == "first\nsecond\n"  # waiting again gives the same result


async def test_execution_time_ends_at_exit_not_at_wait(sandbox: Any) -> None:
    handle = await sandbox.start_process("sleep 0.1")
    await asyncio.sleep(0.5)
    result = await handle.wait()
    assert 0.1 <= result.execution_time < 0.4, result.execution_time
    assert (await handle.wait()).execution_time == result.execution_time


async def test_pid_leads_its_own_process_group(sandbox: Any) -> None:
    handle = await sandbox.start_process("echo $$; sleep 30")
    await wait_for_output(handle, "\n")
    assert int(handle.stdout) == handle.pid
    _, pgrp, sid = stat_fields(handle.pid)
    assert pgrp == sid == handle.pid
    await handle.kill()


async def test_wait_timeout_leaves_the_process_running(sandbox: Any) -> None:
    handle = await sandbox.start_process("echo started; sleep 30")
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await handle.wait(timeout=0.2)
    assert time.monotonic() - started < 1
    assert caught.value.timeout == 0.2
    assert caught.value.stdout == "started\n"
    assert handle.is_running
    assert alive(handle.pid)
    await handle.kill()
    assert not handle.is_running
    assert handle.return_code == 137  # SIGKILL, reported as a shell would
    assert (await handle.wait()).return_code == 137


async def test_kill_kills_the_whole_tree(sandbox: Any) -> None:
    handle = await sandbox.start_process(
        'sleep 30 & echo "child $!"; env -i /bin/sleep 30 & echo "bare $!"; '
        'setsid sleep 30 & echo "daemon $!"; echo "shell $$"; wait'
    )
    await wait_for_output(handle, "shell")
    pids = pids_in(handle.stdout)
    assert len(pids) == 4
    assert all(alive(p) for p in pids.values())
    started = time.monotonic()
    await handle.kill()
    assert time.monotonic() - started < 1
    assert not wait_gone(pids.values(), within=0.5)
    await handle.kill()  # a no-op once it has exited


async def test_callbacks_for_background_processes(sandbox: Any) -> None:
    out: list[tuple[float, str]] = []
    err: list[str] = []
    handle = await sandbox.start_process(
        "echo a; sleep 0.3; echo b >&2; echo c",
        on_stdout=lambda chunk: out.append((time.monotonic(), chunk)),
        on_stderr=err.append,
    )
    await eventually(lambda: out)
    assert [c for _, c in out] == ["a\n"]  # delivered before the process ended
    assert handle.is_running
    result = await handle.wait()
    assert "".join(c for _, c in out) == "a\nc\n" == result.stdout
    assert "".join(err) == "b\n" == result.stderr


async def test_callback_error_kills_and_surfaces_in_wait(sandbox: Any) -> None:
    def on_stdout(chunk: str) -> None:
        raise RuntimeError("callback failed")

    handle = await sandbox.start_process("sleep 30 & echo $!; sleep 30", on_stdout=on_stdout)
    await eventually(lambda: not handle.is_running)
    assert not wait_gone([handle.pid], within=0.5)
    child = int(handle.stdout)
    assert not wait_gone([child], within=0.5)
    with pytest.raises(RuntimeError, match="callback failed"):
        await handle.wait()
    await handle.kill()  # does not raise the callback's error again
    # the sandbox goes on working and closes cleanly
    assert (await sandbox.execute("echo ok")).stdout == "ok\n"
    later = await sandbox.start_process("true")
    assert (await later.wait()).return_code == 0
    await close(sandbox)


async def test_close_kills_running_background_processes(sandbox: Any) -> None:
    handle = await sandbox.start_process('sleep 30 & echo "child $!"; echo "shell $$"; wait')
    quick = await sandbox.start_process("sleep 100 & echo $!")  # exits at once, leaves a child
    await wait_for_output(handle, "shell")
    await quick.wait()
    pids = [*pids_in(handle.stdout).values(), int(quick.stdout)]
    assert all(alive(p) for p in pids)
    await close(sandbox)
    assert not wait_gone(pids, within=0.5)
    assert not handle.is_running


async def test_output_limit_for_background_process(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(output_limit="1MB"))
    started = time.monotonic()
    handle = await sandbox.start_process("exec head -c 50000000 /dev/zero")
    with pytest.raises(OutputLimitExceededError) as caught:
        await handle.wait(timeout=5)
    assert time.monotonic() - started < 3
    assert caught.value.limit == 1_000_000
    assert len(caught.value.stdout) == 1_000_000
    assert not handle.is_running
    assert not wait_gone([handle.pid], within=0.5)


async def test_environment_and_working_dir(make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "hunter2")
    sandbox = await make_sandbox(SandboxConfig(environment_vars={"FROM_CONFIG": "c"}))
    await sandbox.execute("mkdir sub")
    handle = await sandbox.start_process(
        'echo "${MY_SECRET-unset} $FROM_CONFIG $FROM_CALL"; pwd -P',
        environment={"FROM_CALL": "x"},
        working_dir="sub",
    )
    result = await handle.wait()
    line, cwd = result.stdout.splitlines()
    assert line == "unset c x"
    assert cwd.endswith("/sub")


async def test_argument_errors(sandbox: Any) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.start_process("")
    assert caught.value.argument == "command"
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.start_process("true", environment={"1BAD": "x"})
    assert caught.value.argument == "environment"
    for outside in ("..", "/etc"):  # where `cd` goes (without isolation: the host's directories)
        handle = await sandbox.start_process("pwd -P", working_dir=outside)
        assert (await handle.wait()).stdout == (await sandbox.execute(f"cd {outside} && pwd -P")).stdout


async def test_cancelled_wait_leaves_the_process_running() -> None:
    async with AsyncSandbox("local") as sandbox:
        handle = await sandbox.start_process("sleep 30")
        waiter = asyncio.create_task(handle.wait())
        await asyncio.sleep(0.1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert handle.is_running
        assert alive(handle.pid)
    assert not wait_gone([handle.pid], within=0.5)  # closing the sandbox killed it
