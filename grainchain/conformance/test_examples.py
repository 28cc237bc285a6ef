"""Example-based checks for what a state machine handles badly: timeouts, big data, concurrency, streaming
timing, background processes. Each needs the features in its `feature` mark (else it is not applicable)."""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from grainchain.conformance.target import ConformanceTarget
from grainchain.errors import CommandTimeoutError, OutputLimitExceededError
from grainchain.sync import Sandbox

GONE_CHECK = 'for p in $(cat {file}); do if kill -0 "$p" 2>/dev/null; then echo "alive $p"; fi; done'


def _survivors(sandbox: Sandbox, pid_file: str, within: float = 5.0) -> str:
    """Processes listed in pid_file that are still alive after `within` seconds ("" when all are gone)."""
    deadline = time.monotonic() + within
    while True:
        alive = sandbox.execute(GONE_CHECK.format(file=shlex.quote(pid_file))).stdout
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.feature("exec")
def test_timeout_kills_the_whole_tree_and_keeps_partial_output(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        command = (
            "echo $$ > pids; sleep 60 & echo $! >> pids; "
            "(sleep 60 & echo $! >> pids; wait) & "
            "echo before-timeout; echo on-stderr >&2; sleep 60"
        )
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError) as info:
            sandbox.execute(command, timeout=1)
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"a 1 s timeout took {elapsed:.1f} s"
        assert "before-timeout" in info.value.stdout
        assert "on-stderr" in info.value.stderr
        assert info.value.timeout == 1
        assert sandbox.execute("cat pids").stdout.count("\n") == 3  # shell, its child, a grandchild
        assert _survivors(sandbox, "pids") == "", "processes of the timed-out command survived"


@pytest.mark.feature("exec")
def test_default_timeout_comes_from_the_config(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(timeout=1) as sandbox, pytest.raises(CommandTimeoutError):
        sandbox.execute("sleep 60")


@pytest.mark.feature("exec")
def test_large_output_arrives_whole(conformance: ConformanceTarget) -> None:
    size = 3_000_000
    with conformance.sandbox() as sandbox:
        result = sandbox.execute(f"head -c {size} /dev/zero | tr '\\0' 'g'; echo done >&2")
    assert len(result.stdout) == size
    assert set(result.stdout) == {"g"}
    assert result.stderr == "done\n"


@pytest.mark.feature("exec")
def test_output_over_the_limit_raises(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(output_limit="64KB") as sandbox:
        with pytest.raises(OutputLimitExceededError) as info:
            sandbox.execute("head -c 10000000 /dev/zero", timeout=30)
        assert len(info.value.stdout) <= 64_000
        assert sandbox.execute("echo usable").stdout == "usable\n"


@pytest.mark.feature("files", "exec")
def test_large_file_round_trip_is_byte_identical(conformance: ConformanceTarget) -> None:
    data = os.urandom(6 * 1024 * 1024)
    with conformance.sandbox() as sandbox:
        sandbox.upload_file("big.bin", data, mode="wb")
        result = sandbox.execute("sha256sum big.bin")
        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
        assert sandbox.execute("wc -c < big.bin").stdout.strip() == str(len(data))
        assert sandbox.download_file("big.bin") == data
        assert sandbox.get_file_info("big.bin").size == len(data)


@pytest.mark.feature("files", "exec")
def test_concurrent_sandboxes_are_independent(conformance: ConformanceTarget) -> None:
    def work(index: int) -> tuple[str, bytes, str]:
        with conformance.sandbox() as sandbox:
            sandbox.upload_file("who", f"sandbox {index}")
            listing = sorted(i.name for i in sandbox.list_files("."))
            return sandbox.execute("cat who").stdout, sandbox.download_file("who"), ",".join(listing)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for index, (shown, downloaded, _) in enumerate(results):
        assert shown == f"sandbox {index}"
        assert downloaded == f"sandbox {index}".encode()


@pytest.mark.feature("exec.streaming")
def test_streaming_delivers_output_before_the_command_ends(conformance: ConformanceTarget) -> None:
    arrivals: list[tuple[float, str]] = []
    with conformance.sandbox() as sandbox:
        started = time.monotonic()
        result = sandbox.execute(
            "echo first; sleep 1.5; echo second",
            on_stdout=lambda chunk: arrivals.append((time.monotonic() - started, chunk)),
        )
        ended = time.monotonic() - started
    assert "".join(chunk for _, chunk in arrivals) == result.stdout == "first\nsecond\n"
    assert arrivals[0][0] < ended - 1.0, "the first line arrived only when the command ended"


@pytest.mark.feature("process.background", "exec")
def test_background_process_runs_until_killed(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        handle = sandbox.start_process("echo started; echo $$ > bgpid; sleep 60")
        deadline = time.monotonic() + 10
        while "started" not in handle.stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "started" in handle.stdout, "output so far is not visible while the process runs"
        assert handle.is_running
        with pytest.raises(CommandTimeoutError):
            handle.wait(timeout=0.5)
        assert handle.is_running, "wait(timeout) must not kill the process"
        handle.kill()
        assert not handle.is_running
        assert _survivors(sandbox, "bgpid") == ""
