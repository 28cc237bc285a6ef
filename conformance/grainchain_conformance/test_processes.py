"""Processes (convention:processes): kill() and a background process's descendants, streaming from a
background process, nonexistent working directories, and that nothing of a sandbox runs while it is
terminated."""

from __future__ import annotations

import time

import pytest

from grainchain.errors import CommandTimeoutError, FileNotFoundInSandboxError
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget


@pytest.mark.feature("process.background", "exec")
@pytest.mark.promises("convention:processes", "op:start_process", "feature:process.background")
def test_kill_ends_the_process_and_everything_it_started(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        handle = sandbox.start_process(inside.FAMILY.format(pids="pids"))
        inside.wait_for_lines(sandbox, "pids", inside.family_size(sandbox))
        assert handle.is_running
        # `id` always names the process (a string); `pid` only where the provider has one
        assert isinstance(handle.id, str), f"handle.id is {handle.id!r}, not a str"
        assert handle.id, "handle.id is empty"
        assert handle.pid is None or (isinstance(handle.pid, int) and handle.pid > 0), handle.pid
        other = sandbox.start_process("true")
        assert isinstance(other.id, str)
        assert other.id != handle.id, f"two processes share the id {handle.id!r}"
        other.wait(timeout=30)
        handle.kill()
        assert not handle.is_running
        assert inside.survivors(sandbox, "pids") == "", "kill() left processes the command started"
        result = handle.wait(timeout=10)
        assert "family-started" in result.stdout, "the output so far is kept after kill()"


@pytest.mark.feature("process.background", "exec.streaming")
@pytest.mark.promises("op:start_process", "param:start_process.on_stdout", "param:start_process.on_stderr")
def test_background_output_streams_while_it_runs(conformance: ConformanceTarget) -> None:
    out: list[tuple[float, str]] = []
    err: list[str] = []
    with conformance.sandbox() as sandbox:
        started = time.monotonic()
        handle = sandbox.start_process(
            "echo one; echo one-err >&2; sleep 1.5; echo two; echo two-err >&2",
            on_stdout=lambda chunk: out.append((time.monotonic() - started, chunk)),
            on_stderr=err.append,
        )
        result = handle.wait(timeout=30)
        ended = time.monotonic() - started
    assert "".join(chunk for _, chunk in out) == result.stdout == "one\ntwo\n"
    assert "".join(err) == result.stderr == "one-err\ntwo-err\n"
    assert out[0][0] < ended - 1.0, "background stdout arrived only when the process ended"
    assert (handle.stdout, handle.return_code) == ("one\ntwo\n", 0)


@pytest.mark.feature("process.background")
@pytest.mark.promises(
    "param:start_process.working_dir",
    "param:start_process.environment",
    "raises:start_process.FileNotFoundInSandboxError",
)
def test_background_working_dir_and_environment(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(environment_vars={"GC_A": "config", "GC_B": "config"}) as sandbox:
        with pytest.raises(FileNotFoundInSandboxError):
            sandbox.start_process("echo ran > ran-here", working_dir="no-such-dir")
        sandbox.start_process("mkdir -p sub/inner").wait(timeout=30)
        handle = sandbox.start_process(
            'pwd; printf "%s|%s" "$GC_A" "$GC_B"', working_dir="sub/inner", environment={"GC_B": "call"}
        )
        result = handle.wait(timeout=30)
        workdir, values = result.stdout.split("\n", 1)
        assert (workdir.rsplit("/", 2)[-2:], values) == (["sub", "inner"], "config|call"), result.stdout
        for working_dir in ("sub/../..", "/tmp"):  # where `cd` goes
            shown = sandbox.start_process("pwd", working_dir=working_dir).wait(timeout=30).stdout.strip()
            assert shown == sandbox.start_process(f"cd {working_dir} && pwd").wait(timeout=30).stdout.strip()


@pytest.mark.feature("lifecycle.terminate_wake", "exec")
@pytest.mark.promises(
    "op:terminate", "convention:processes", "feature:lifecycle.terminate_wake", "op:wake_up"
)
def test_nothing_runs_while_terminated(conformance: ConformanceTarget) -> None:
    """A counter started before terminate() must not count while the sandbox is terminated (after wake_up
    it may run on, from memory, or be gone)."""
    with conformance.sandbox() as sandbox:
        inside.start_counter(sandbox)
        sandbox.execute("echo kept across terminate > kept")
        before = inside.counter_value(sandbox)
        sandbox.terminate()
        time.sleep(2.0)  # 40 ticks, were anything still running
        sandbox.wake_up()
        after = inside.counter_value(sandbox)
        assert after - before < 15, f"the counter went from {before} to {after} while terminated"
        assert sandbox.execute("cat kept").stdout == "kept across terminate\n", "files lost in terminate"


@pytest.mark.feature("process.background", "exec")
@pytest.mark.promises("convention:output", "op:start_process")
def test_a_background_process_gives_its_output_as_bytes(conformance: ConformanceTarget) -> None:
    binary = "printf '\\377\\376abc\\000x'"
    raw, text = b"\xff\xfeabc\x00x", "\ufffd\ufffdabc\x00x"
    with conformance.sandbox() as sandbox:
        handle = sandbox.start_process(f"{binary}; {binary} >&2; sleep 30")
        until = time.monotonic() + 15
        while (handle.stdout_bytes, handle.stderr_bytes) != (raw, raw) and time.monotonic() < until:
            time.sleep(0.1)
        assert (handle.stdout_bytes, handle.stderr_bytes) == (raw, raw), "the bytes so far, while it runs"
        assert (handle.stdout, handle.stderr) == (text, text)
        with pytest.raises(CommandTimeoutError) as info:
            handle.wait(timeout=0.5)
        assert (info.value.stdout_bytes, info.value.stderr_bytes) == (raw, raw)
        handle.kill()
        result = handle.wait(timeout=10)
        assert (result.stdout_bytes, result.stderr_bytes) == (raw, raw), "all of it once it ended"
        assert (result.stdout, result.stderr) == (text, text)
        assert (handle.stdout_bytes, handle.stderr_bytes) == (raw, raw)
