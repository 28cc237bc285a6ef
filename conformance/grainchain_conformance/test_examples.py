"""Example-based checks for what a state machine handles badly or only by chance: timeouts, big data,
concurrency, streaming timing, background processes, the sandbox-wide config fields, awkward names in a
listing, snapshots across sandboxes. Each needs the features in its `feature` mark (else it is not
applicable)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from grainchain.adapters import Feature
from grainchain.errors import (
    CommandTimeoutError,
    InvalidArgumentError,
    MemoryLimitExceededError,
    OutputLimitExceededError,
    SandboxNotRunningError,
    SnapshotNotFoundError,
)
from grainchain.models import SandboxStatus, SnapshotKind
from grainchain_conformance.inside import COUNTER, counter_reaches, survivors
from grainchain_conformance.target import ConformanceTarget


@pytest.mark.feature("exec")
@pytest.mark.promises("raises:execute.CommandTimeoutError", "param:execute.timeout", "convention:processes")
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
        assert survivors(sandbox, "pids") == "", "processes of the timed-out command survived"


@pytest.mark.feature("exec")
@pytest.mark.promises("config:timeout")
def test_default_timeout_comes_from_the_config(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(timeout=1) as sandbox, pytest.raises(CommandTimeoutError):
        sandbox.execute("sleep 60")


@pytest.mark.feature("exec")
@pytest.mark.promises("config:environment_vars", "param:execute.environment")
def test_config_environment_reaches_every_command(conformance: ConformanceTarget) -> None:
    config_env = {"GC_CONFORMANCE_FROM_CONFIG": "set for the whole sandbox"}
    with conformance.sandbox(environment_vars=config_env) as sandbox:
        shown = 'printf "%s|%s" "$GC_CONFORMANCE_FROM_CONFIG" "$GC_CONFORMANCE_PER_CALL"'
        result = sandbox.execute(shown, environment={"GC_CONFORMANCE_PER_CALL": "and this call"})
        assert result.stdout == "set for the whole sandbox|and this call"
        if conformance.supports(Feature.PROCESS_BACKGROUND):
            assert sandbox.start_process(shown).wait(timeout=30).stdout == "set for the whole sandbox|"


@pytest.mark.feature("exec", "files")
@pytest.mark.promises("config:working_directory", "param:execute.working_dir", "field:FileInfo.path")
def test_commands_start_where_they_are_told(conformance: ConformanceTarget) -> None:
    """SandboxConfig.working_directory is where commands and relative paths start; working_dir moves one
    command (relative to that start, or absolute)."""
    with conformance.sandbox(working_directory="gc-conformance-start") as sandbox:
        start = sandbox.execute("pwd").stdout.rstrip("\n")
        assert start.rsplit("/", 1)[-1] == "gc-conformance-start", f"commands start in {start}"
        sandbox.make_directory("inner dir")
        sandbox.upload_file("inner dir/note", "relative paths start there too")
        assert sandbox.get_file_info("inner dir/note").path == f"{start}/inner dir/note"
        inner = f"{start}/inner dir"
        for working_dir in ("inner dir", inner):
            result = sandbox.execute("pwd; cat note", working_dir=working_dir)
            assert result.stdout == f"{inner}\nrelative paths start there too", f"working_dir={working_dir!r}"


@pytest.mark.feature("exec")
@pytest.mark.promises("op:execute", "field:ExecutionResult.stdout", "field:ExecutionResult.stderr")
def test_large_output_arrives_whole(conformance: ConformanceTarget) -> None:
    size = 3_000_000
    with conformance.sandbox() as sandbox:
        result = sandbox.execute(f"head -c {size} /dev/zero | tr '\\0' 'g'; echo done >&2")
    assert len(result.stdout) == size
    assert set(result.stdout) == {"g"}
    assert result.stderr == "done\n"


@pytest.mark.feature("exec")
@pytest.mark.promises("config:output_limit", "raises:execute.OutputLimitExceededError")
def test_output_over_the_limit_raises(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(output_limit="64KB") as sandbox:
        with pytest.raises(OutputLimitExceededError) as info:
            sandbox.execute("head -c 10000000 /dev/zero", timeout=30)
        assert len(info.value.stdout) <= 64_000
        assert sandbox.execute("echo usable").stdout == "usable\n"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("feature:files", "op:download_file", "field:FileInfo.size")
def test_large_file_round_trip_is_byte_identical(conformance: ConformanceTarget) -> None:
    data = os.urandom(6 * 1024 * 1024)
    with conformance.sandbox() as sandbox:
        sandbox.upload_file("big.bin", data, mode="wb")
        result = sandbox.execute("sha256sum big.bin")
        assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
        assert sandbox.execute("wc -c < big.bin").stdout.strip() == str(len(data))
        assert sandbox.download_file("big.bin") == data
        assert sandbox.get_file_info("big.bin").size == len(data)
        assert [i.size for i in sandbox.list_files(".") if i.name == "big.bin"] == [len(data)]


# Names a listing must not lose (hidden, quoted, shell-special, non-ASCII, long), each with another size.
LISTED_NAMES = [".hidden", "with space", "quote'\"", "$HOME", "[x]", "a;b", "éü中", "long-" + "n" * 120]
LISTED_SIZES = [0, 1, 4097, 70_000]


@pytest.mark.feature("files")
@pytest.mark.promises("op:list_files", "field:FileInfo.size", "field:FileInfo.is_directory")
def test_listing_shows_every_entry_with_its_size(conformance: ConformanceTarget) -> None:
    expected = {name: (False, LISTED_SIZES[i % len(LISTED_SIZES)]) for i, name in enumerate(LISTED_NAMES)}
    expected["sub dir"] = (True, 0)
    with conformance.sandbox() as sandbox:
        sandbox.make_directory("listing/sub dir")
        for name, (_, size) in expected.items():
            if name != "sub dir":
                sandbox.upload_file(f"listing/{name}", os.urandom(size), mode="wb")
        listing = sandbox.list_files("listing")
        assert {i.name: (i.is_directory, 0 if i.is_directory else i.size) for i in listing} == expected
        for info in listing:  # the same entry, however it is asked for
            alone = sandbox.get_file_info(f"listing/{info.name}")
            assert (alone.path, alone.is_directory, alone.size) == (info.path, info.is_directory, info.size)


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("lifecycle:create")
def test_concurrent_sandboxes_are_independent(conformance: ConformanceTarget) -> None:
    def work(index: int) -> tuple[str, bytes, list[str]]:
        with conformance.sandbox() as sandbox:
            sandbox.upload_file(f"who-{index}", f"sandbox {index}")
            own = sorted(i.name for i in sandbox.list_files(".") if i.name.startswith("who-"))
            return sandbox.execute(f"cat who-{index}").stdout, sandbox.download_file(f"who-{index}"), own

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for index, (shown, downloaded, own) in enumerate(results):
        assert shown == f"sandbox {index}"
        assert downloaded == f"sandbox {index}".encode()
        assert own == [f"who-{index}"], "a sandbox sees another sandbox's files"


@pytest.mark.feature("snapshot.filesystem", "files")
@pytest.mark.promises("op:restore_snapshot", "op:create_snapshot")
def test_each_snapshot_restores_its_own_state_into_any_sandbox(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as first, conformance.sandbox() as second:
        first.upload_file("state", "one")
        one = first.create_snapshot()
        first.upload_file("state", "two, longer")
        first.upload_file("later", "written after the first snapshot")
        two = first.create_snapshot()
        try:
            assert one != two, "every snapshot needs its own id"
            first.restore_snapshot(one)
            assert first.download_file("state") == b"one"
            assert not first.file_exists("later")
            second.upload_file("own", "what the other sandbox had before the restore")
            second.restore_snapshot(two)  # taken by another sandbox of the same provider
            assert second.download_file("state") == b"two, longer"
            assert (second.file_exists("later"), second.file_exists("own")) == (True, False)
        finally:
            for snapshot_id in dict.fromkeys([one, two]):
                with contextlib.suppress(SnapshotNotFoundError):
                    first.delete_snapshot(snapshot_id)


@pytest.mark.feature("exec.streaming")
@pytest.mark.promises("feature:exec.streaming", "param:execute.on_stdout", "param:execute.on_stderr")
def test_streaming_delivers_output_before_the_command_ends(conformance: ConformanceTarget) -> None:
    out: list[tuple[float, str]] = []
    err: list[tuple[float, str]] = []
    with conformance.sandbox() as sandbox:
        started = time.monotonic()
        result = sandbox.execute(
            "echo first; echo first-err >&2; sleep 1.5; echo second; echo second-err >&2",
            on_stdout=lambda chunk: out.append((time.monotonic() - started, chunk)),
            on_stderr=lambda chunk: err.append((time.monotonic() - started, chunk)),
        )
        ended = time.monotonic() - started
    assert "".join(chunk for _, chunk in out) == result.stdout == "first\nsecond\n"
    assert "".join(chunk for _, chunk in err) == result.stderr == "first-err\nsecond-err\n"
    assert out[0][0] < ended - 1.0, "the first line of stdout arrived only when the command ended"
    assert err[0][0] < ended - 1.0, "the first line of stderr arrived only when the command ended"


@pytest.mark.feature("process.background", "exec")
@pytest.mark.promises("feature:process.background", "op:start_process")
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
        assert survivors(sandbox, "bgpid") == ""


@pytest.mark.feature("snapshot.memory", "exec")
@pytest.mark.promises("feature:snapshot.memory", "op:create_snapshot")
def test_memory_snapshot_brings_a_running_process_back(conformance: ConformanceTarget) -> None:
    """After a memory snapshot is restored (through wake_up when the provider can terminate), a process
    that ran at snapshot time runs again and counts on from the value it had then, not from 1."""
    with conformance.sandbox() as sandbox:
        sandbox.execute(COUNTER.format(name="counter"))
        counter_reaches(sandbox, 5)
        snapshot_id = sandbox.create_snapshot(kind=SnapshotKind.memory)
        try:
            at_snapshot = int(sandbox.execute("cat counter").stdout)
            later = counter_reaches(sandbox, at_snapshot + 20)  # the snapshot did not stop it
            if conformance.supports(Feature.LIFECYCLE_TERMINATE_WAKE):
                sandbox.terminate()
                sandbox.wake_up(snapshot_id)
            else:
                sandbox.restore_snapshot(snapshot_id)
            resumed = int(sandbox.execute("cat counter").stdout)
            assert at_snapshot - 10 <= resumed < later, (
                f"counter was {at_snapshot} at the snapshot and {later} before the restore, {resumed} after"
            )
            counter_reaches(sandbox, resumed + 5)
        finally:
            sandbox.delete_snapshot(snapshot_id)


def _status(sandbox: Any) -> SandboxStatus:
    status: SandboxStatus = sandbox.status  # (a call, so that type checkers keep no earlier narrowing)
    return status


@pytest.mark.feature("lifecycle.terminate_wake", "exec")
@pytest.mark.promises("feature:lifecycle.terminate_wake", "op:terminate", "op:wake_up")
def test_terminated_sandbox_refuses_work_until_woken(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.execute("echo kept > kept-file")
        sandbox.terminate()
        assert _status(sandbox) is SandboxStatus.terminated
        with pytest.raises(SandboxNotRunningError):
            sandbox.execute("true")
        sandbox.wake_up()
        assert _status(sandbox) is SandboxStatus.running
        assert sandbox.execute("cat kept-file").stdout == "kept\n"


# Serves www/index.html on port 8080 with whatever the image has: python3, or busybox's httpd.
SERVE = (
    "mkdir -p www && printf %s {token} > www/index.html && "
    "(if command -v python3 >/dev/null; then cd www && exec python3 -m http.server 8080; "
    "else exec busybox httpd -f -p 8080 -h www; fi) >/dev/null 2>&1 &"
)


def _fetch(url: str, within: float) -> str:
    """The body at url, retried while nothing listens there yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answers at {url}: {exc}") from exc
            time.sleep(0.1)


@pytest.mark.feature("ports", "exec")
@pytest.mark.promises(
    "feature:ports", "config:ports", "op:port_address", "raises:port_address.InvalidArgumentError"
)
def test_published_port_reaches_a_server_in_the_sandbox(conformance: ConformanceTarget) -> None:
    token = os.urandom(8).hex()
    with conformance.sandbox(ports=[8080]) as sandbox:
        sandbox.execute(SERVE.format(token=token))
        address = sandbox.port_address(8080)
        host, _, port = address.rpartition(":")
        assert host, f"{address!r} is not host:port"
        assert port.isdigit(), f"{address!r} is not host:port"
        assert _fetch(f"http://{address}/index.html", within=15) == token
        with pytest.raises(InvalidArgumentError):
            sandbox.port_address(8081)  # not published at creation


@pytest.mark.feature("limits.memory", "exec")
@pytest.mark.promises(
    "feature:limits.memory", "config:memory_limit", "raises:execute.MemoryLimitExceededError"
)
def test_command_over_the_memory_limit_is_reported(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(memory_limit="64MB") as sandbox:
        assert sandbox.execute("echo fits").stdout == "fits\n"
        with pytest.raises(MemoryLimitExceededError) as info:  # dd allocates its 256 MB block
            sandbox.execute("echo before; dd if=/dev/zero of=/dev/null bs=256M count=1")
        assert info.value.limit == 64_000_000
        assert info.value.return_code != 0
        assert info.value.stdout == "before\n"
        assert info.value.stdout_bytes == b"before\n", "the error carries the bytes so far too"
        assert sandbox.execute("echo still usable").stdout == "still usable\n"


@pytest.mark.feature("limits.cpu", "exec")
@pytest.mark.promises("feature:limits.cpu", "config:cpu_limit")
def test_cpu_limit_caps_what_busy_processes_get(conformance: ConformanceTarget) -> None:
    """Two busy loops for about two seconds get at most cpu_limit cores between them (the shell's `times`
    reports its children's CPU time; load on the machine can only lower it)."""
    busy = "end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done"
    with conformance.sandbox(cpu_limit=0.25) as sandbox:
        result = sandbox.execute(f"({busy}) & ({busy}) & wait; times", timeout=60)
    children = result.stdout.strip().splitlines()[-1].split()  # e.g. "0m0.71s 0m0.03s"
    cpu = sum(int(t.split("m")[0]) * 60 + float(t.split("m")[1].rstrip("s")) for t in children)
    wall = result.execution_time
    assert cpu <= 0.25 * wall * 1.5 + 0.3, f"{cpu:.2f} s of CPU in {wall:.2f} s with cpu_limit=0.25"
