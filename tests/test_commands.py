"""The command plumbing every provider shares, without a provider: the finish step (grainchain._commands
.settle), the driver of execute() and the background handle over a fake CommandRun (both flavours), and the
registry of live handles."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from grainchain._async import commands as acommands
from grainchain._async.process import AsyncProcessHandle
from grainchain._commands import settle
from grainchain._output import OutputCollector, Stream
from grainchain._sync import commands as scommands
from grainchain._sync.process import ProcessHandle
from grainchain.errors import (
    CommandTimeoutError,
    MemoryLimitExceededError,
    OutputLimitExceededError,
    ProviderError,
)


def collected(out: bytes = b"", err: bytes = b"", limit: int = 1000) -> OutputCollector:
    output = OutputCollector(limit=limit)
    output.feed(Stream.STDOUT, out)
    output.feed(Stream.STDERR, err)
    return output


# -- the finish step -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 127, 137])
def test_an_exit_is_a_result_whatever_its_code(code: int) -> None:
    result = settle("cmd", collected(b"out", b"err"), exit_code=code, elapsed=1.5)
    assert (result.command, result.return_code, result.stdout, result.stderr) == ("cmd", code, "out", "err")
    assert result.execution_time == 1.5


def test_a_timeout_raises_with_the_partial_output() -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        settle("sleep 9", collected(b"so far", b"warned"), exit_code=None, elapsed=2.0, timeout=2.0)
    error = caught.value
    assert (error.command, error.timeout, error.stdout, error.stderr) == ("sleep 9", 2.0, "so far", "warned")
    assert "timed out after 2s" in error.message


@pytest.mark.parametrize("code", [None, 0, 137])  # killed for it, or ended as the cap was hit
def test_more_output_than_the_cap_raises_with_what_fitted(code: int | None) -> None:
    with pytest.raises(OutputLimitExceededError) as caught:
        settle("yes", collected(b"abcdef", b"gh", limit=4), exit_code=code, elapsed=1.0, timeout=9.0)
    assert (caught.value.limit, caught.value.stdout, caught.value.stderr) == (4, "abcd", "")


def test_a_failure_with_oom_evidence_is_a_memory_error() -> None:
    with pytest.raises(MemoryLimitExceededError) as caught:
        settle(
            "hog",
            collected(b"partial"),
            exit_code=137,
            elapsed=1.0,
            oom_killed=True,
            memory_limit=32 << 20,
            provider="acme",
        )
    error = caught.value
    assert (error.command, error.return_code, error.limit, error.provider) == ("hog", 137, 32 << 20, "acme")
    assert error.stdout == "partial"


def test_oom_evidence_alone_is_no_error() -> None:
    """A success is a success (another process of the sandbox was killed); a failure without evidence is a
    plain failure."""
    assert settle("ok", collected(), exit_code=0, elapsed=0.1, oom_killed=True).return_code == 0
    assert settle("fails", collected(), exit_code=137, elapsed=0.1, oom_killed=False).return_code == 137


def test_a_timeout_or_an_overflow_wins_over_oom_evidence() -> None:
    with pytest.raises(CommandTimeoutError):
        settle("t", collected(), exit_code=None, elapsed=1.0, timeout=1.0, oom_killed=True)
    with pytest.raises(OutputLimitExceededError):
        settle("o", collected(b"xx", limit=1), exit_code=137, elapsed=1.0, oom_killed=True)


RAW = b"\xff\xfeabc\x00x"


def test_the_result_and_every_error_carry_the_bytes_and_their_text() -> None:
    result = settle("cmd", collected(RAW, b"e\xc3"), exit_code=0, elapsed=0.1)
    assert (result.stdout_bytes, result.stderr_bytes) == (RAW, b"e\xc3")
    assert (result.stdout, result.stderr) == ("\ufffd\ufffdabc\x00x", "e\ufffd")
    with pytest.raises(CommandTimeoutError) as timeout:
        settle("t", collected(RAW, RAW), exit_code=None, elapsed=1.0, timeout=1.0)
    with pytest.raises(OutputLimitExceededError) as overflow:
        settle("o", collected(RAW, RAW, limit=10), exit_code=137, elapsed=1.0)
    with pytest.raises(MemoryLimitExceededError) as oom:
        settle("m", collected(RAW, RAW), exit_code=137, elapsed=1.0, oom_killed=True, memory_limit=1)
    assert (timeout.value.stdout_bytes, timeout.value.stderr_bytes) == (RAW, RAW)
    assert (overflow.value.stdout_bytes, overflow.value.stderr_bytes) == (RAW, RAW[:3])
    assert (oom.value.stdout_bytes, oom.value.stderr_bytes) == (RAW, RAW)


def test_one_copy_of_the_output_and_what_was_handed_out_never_changes() -> None:
    """The result's bytes are the collector's buffer (no second copy of a big output); a later chunk does
    not change bytes handed out before (a background handle's output so far)."""
    output = collected(b"a" * 1000, limit=1 << 20)
    so_far = output.raw_bytes(Stream.STDOUT)
    output.feed(Stream.STDOUT, b"b")
    assert so_far == b"a" * 1000
    result = settle("cmd", output, exit_code=0, elapsed=0.1)
    assert result.stdout_bytes is output.raw_bytes(Stream.STDOUT)
    assert result.stdout_bytes == b"a" * 1000 + b"b"


def test_a_character_split_across_chunks_is_decoded_whole() -> None:
    chunks: list[str] = []
    output = OutputCollector(limit=100, on_stdout=chunks.append)
    for piece in (b"x\xc3", b"\xa9y\xe2\x82", b"\xac", b"\xc3"):
        output.feed(Stream.STDOUT, piece)
    output.finish()
    assert "".join(chunks) == output.stdout == "x\u00e9y\u20ac\ufffd"
    assert output.total == 8, "the cap counts bytes, once"


def test_text_only_output_says_none_for_the_bytes() -> None:
    """A provider whose SDK hands over decoded text feeds it re-encoded (for the cap and the text); those
    are not the bytes the command wrote, so none are claimed."""
    output = OutputCollector(limit=100, raw=False)
    output.feed(Stream.STDOUT, "\ufffdok".encode())
    result = settle("cmd", output, exit_code=0, elapsed=0.1)
    assert (result.stdout, result.stdout_bytes, result.stderr_bytes) == ("\ufffdok", None, None)


def test_no_exit_code_and_no_timeout_is_a_plumbing_bug() -> None:
    with pytest.raises(ValueError, match="neither an exit code nor a timeout"):
        settle("cmd", collected(), exit_code=None, elapsed=1.0)


# -- fake runs (CommandRun) and adapters ---------------------------------------------------------------


class AsyncFakeRun:
    """Writes `out`, then ends with `code` (finishes), stays running (not finishes: a deadline), raises
    `error`, or ignores the deadline (hangs). Records what the plumbing asked of it."""

    def __init__(
        self,
        out: bytes = b"out",
        code: int = 0,
        finishes: bool = True,
        error: Exception | None = None,
        hangs: bool = False,
    ) -> None:
        self.id = "run-7"
        self.out, self.code, self.finishes, self.error, self.hangs = out, code, finishes, error, hangs
        self.calls: list[str] = []
        self.ended = asyncio.Event()

    async def pid(self) -> int | None:
        return None

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        self.calls.append("pump")
        output.feed(Stream.STDOUT, self.out)
        if self.error is not None:
            raise self.error
        if self.hangs:
            await asyncio.sleep(60)
        if deadline is None and not output.overflowed:  # a background process: until it is killed
            await self.ended.wait()
        return self.finishes and not output.overflowed

    async def stop(self, output: OutputCollector) -> None:
        self.calls.append("stop")

    async def signal(self) -> None:
        self.calls.append("signal")
        self.ended.set()

    async def exit_code(self) -> int:
        self.calls.append("exit_code")
        return self.code

    async def abandon(self) -> int | None:
        self.calls.append("abandon")
        return None

    async def close(self) -> None:
        self.calls.append("close")


class SyncFakeRun:
    """AsyncFakeRun for the sync plumbing (no hanging pump: a sync pump honours its deadline)."""

    def __init__(
        self, out: bytes = b"out", code: int = 0, finishes: bool = True, error: Exception | None = None
    ):
        self.id = "run-7"
        self.out, self.code, self.finishes, self.error = out, code, finishes, error
        self.calls: list[str] = []

    def pid(self) -> int | None:
        return None

    def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        self.calls.append("pump")
        output.feed(Stream.STDOUT, self.out)
        if self.error is not None:
            raise self.error
        return self.finishes and not output.overflowed

    def stop(self, output: OutputCollector) -> None:
        self.calls.append("stop")

    def signal(self) -> None:
        self.calls.append("signal")

    def exit_code(self) -> int:
        self.calls.append("exit_code")
        return self.code

    def abandon(self) -> int | None:
        self.calls.append("abandon")
        return None

    def close(self) -> None:
        self.calls.append("close")


class FakeAdapter:
    """What an OomWatch asks of its adapter; `oom_kills` is the sandbox's count of OOM kills."""

    provider_name = "acme"

    def __init__(self, oom_kills: int = 0) -> None:
        self.config = SimpleNamespace(memory_limit=64 << 20)
        self.oom_kills = oom_kills
        self.asked = 0

    async def _oom_killed_since(self, baseline: int) -> bool:
        self.asked += 1
        return self.oom_kills > baseline


class SyncFakeAdapter(FakeAdapter):
    def _oom_killed_since(self, baseline: int) -> bool:  # type: ignore[override]
        self.asked += 1
        return self.oom_kills > baseline


# -- the driver of execute() ---------------------------------------------------------------------------


async def drive(run: Any, timeout: float | None = 5.0, oom: Any = None, limit: int = 1000) -> Any:
    return await acommands.run_to_completion(
        run, "cmd", OutputCollector(limit=limit), timeout, time.monotonic(), oom
    )


async def test_a_run_that_ends_gives_its_result() -> None:
    run = AsyncFakeRun(code=3)
    result = await drive(run)
    assert (result.return_code, result.stdout) == (3, "out")
    assert run.calls == ["pump", "exit_code", "close"]


async def test_a_run_past_its_deadline_is_stopped_and_times_out() -> None:
    run = AsyncFakeRun(b"partial", finishes=False)
    with pytest.raises(CommandTimeoutError) as caught:
        await drive(run, timeout=1.0)
    assert caught.value.stdout == "partial"
    assert run.calls == ["pump", "stop", "close"]


async def test_a_run_over_the_cap_is_stopped() -> None:
    run = AsyncFakeRun(b"0123456789")
    with pytest.raises(OutputLimitExceededError):
        await drive(run, limit=4)
    assert run.calls == ["pump", "stop", "close"]


async def test_an_interrupted_run_is_abandoned_and_closed() -> None:
    run = AsyncFakeRun(error=ProviderError("the stream broke"))
    with pytest.raises(ProviderError):
        await drive(run)
    assert run.calls == ["pump", "abandon", "close"]


async def test_a_pump_that_ignores_its_deadline_is_cut_off() -> None:
    """A remote run whose SDK call hangs past the deadline: the driver cancels it (async) and stops it."""
    run = AsyncFakeRun(b"so far", hangs=True)
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as caught:
        await drive(run, timeout=0.1)
    assert time.monotonic() - started < 2.0
    assert caught.value.stdout == "so far"
    assert run.calls == ["pump", "stop", "close"]


async def test_a_cancelled_execute_abandons_its_run() -> None:
    run = AsyncFakeRun(hangs=True)
    task = asyncio.create_task(drive(run, timeout=None))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.calls == ["pump", "abandon", "close"]


async def test_oom_evidence_is_asked_for_only_after_a_failure() -> None:
    adapter = FakeAdapter(oom_kills=1)
    assert (await drive(AsyncFakeRun(code=0), oom=acommands.OomWatch(adapter, 0))).return_code == 0
    assert adapter.asked == 0, "a successful command paid for an OOM check"
    with pytest.raises(MemoryLimitExceededError) as caught:
        await drive(AsyncFakeRun(code=137), oom=acommands.OomWatch(adapter, 0))
    assert adapter.asked == 1
    assert (caught.value.limit, caught.value.provider) == (64 << 20, "acme")
    assert (await drive(AsyncFakeRun(code=137), oom=acommands.OomWatch(adapter, 1))).return_code == 137


def test_the_sync_driver_decides_alike() -> None:
    def drive_sync(run: SyncFakeRun, oom: Any = None) -> Any:
        return scommands.run_to_completion(
            run, "cmd", OutputCollector(limit=1000), 1.0, time.monotonic(), oom
        )

    ended = SyncFakeRun(code=3)
    assert drive_sync(ended).return_code == 3
    assert ended.calls == ["pump", "exit_code", "close"]
    late = SyncFakeRun(b"partial", finishes=False)
    with pytest.raises(CommandTimeoutError):
        drive_sync(late)
    assert late.calls == ["pump", "stop", "close"]
    broken = SyncFakeRun(error=ProviderError("the stream broke"))
    with pytest.raises(ProviderError):
        drive_sync(broken)
    assert broken.calls == ["pump", "abandon", "close"]
    adapter = SyncFakeAdapter(oom_kills=1)
    with pytest.raises(MemoryLimitExceededError):
        drive_sync(SyncFakeRun(code=137), scommands.OomWatch(adapter, 0))  # type: ignore[arg-type]


# -- background handles and the registry ---------------------------------------------------------------


async def test_a_handle_is_named_by_its_run_and_may_have_no_pid() -> None:
    run = AsyncFakeRun(code=0)
    handle = AsyncProcessHandle("serve", run, OutputCollector(limit=1000))
    assert (handle.id, handle.pid) == ("run-7", None)
    assert handle.is_running
    await handle.kill()
    assert sorted(run.calls) == ["close", "exit_code", "pump", "signal"]
    assert run.calls[-1] == "close"
    result = await handle.wait(timeout=5)
    assert (result.return_code, result.stdout, handle.return_code) == (0, "out", 0)


async def test_a_handle_reports_an_oom_kill_on_wait() -> None:
    adapter = FakeAdapter(oom_kills=1)
    run = AsyncFakeRun(code=137)
    handle = AsyncProcessHandle(
        "hog", run, OutputCollector(limit=1000), pid=42, oom=acommands.OomWatch(adapter, 0)
    )
    assert handle.pid == 42
    await handle.kill()
    with pytest.raises(MemoryLimitExceededError):
        await handle.wait(timeout=5)


def test_the_sync_handle_follows_its_run_in_a_thread() -> None:
    run = SyncFakeRun(code=5)
    handle = ProcessHandle("job", run, OutputCollector(limit=1000), pid=None)  # type: ignore[arg-type]
    result = handle.wait(timeout=5)
    assert (handle.id, handle.pid, result.return_code, result.stdout) == ("run-7", None, 5, "out")
    assert run.calls == ["pump", "exit_code", "close"]


async def test_the_registry_tracks_live_handles_and_kills_them_all() -> None:
    registry = acommands.HandleRegistry()
    first, second = AsyncFakeRun(), AsyncFakeRun()
    handles = [AsyncProcessHandle(c, r, OutputCollector(limit=10)) for c, r in (("a", first), ("b", second))]
    for handle in handles:
        registry.add(handle)
    assert registry.running() == handles
    assert len(registry) == 2

    async def cannot_kill() -> None:
        raise ProviderError("the engine is gone")

    handles[0]._signal = cannot_kill  # type: ignore[method-assign]
    await registry.kill_all()  # one failure spares no other
    assert "signal" in second.calls
    assert not handles[1].is_running
    assert len(registry) == 0
    first.ended.set()
    await handles[0].wait(timeout=5)
    registry.add(handles[0])  # ended handles are dropped as new ones come
    registry.add(handles[1])
    assert list(registry) == [handles[1]]
