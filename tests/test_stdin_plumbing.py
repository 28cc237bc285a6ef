"""Standard input in the command plumbing every provider shares, without a provider: execute()'s feed
(pieces, end of file, a command that stops reading, one that never reads, a failing write), the handle's
write_stdin / close_stdin and their errors, in both flavours; and the _acompat primitives they use.
Providers are checked by the conformance suite (conformance/grainchain_conformance/test_stdin.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import pytest

from grainchain import _acompat as ac
from grainchain._async import commands as acommands
from grainchain._async.process import AsyncProcessHandle
from grainchain._output import OutputCollector, Stream
from grainchain._sync import commands as scommands
from grainchain._sync.process import ProcessHandle
from grainchain.errors import InvalidArgumentError, ProviderError, StdinClosedError

CHUNK = acommands.STDIN_CHUNK


class AsyncStdinRun:
    """A CommandRun that records what reaches its stdin. `reads`: bytes it takes before it stops reading
    (StdinClosedError after); `blocks`: a write waits until close_stdin(); `error`: a write raises it."""

    def __init__(
        self, reads: int | None = None, blocks: bool = False, error: Exception | None = None
    ) -> None:
        self.id = "run-stdin"
        self.reads, self.blocks, self.error = reads, blocks, error
        self.written = bytearray()
        self.pieces: list[int] = []
        self.calls: list[str] = []
        self.closed = asyncio.Event()
        self.ended = asyncio.Event()

    async def pid(self) -> int | None:
        return None

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        if not self.blocks:  # it reads until its stdin ends (or it stops reading), then ends
            await self.ended.wait()
        output.feed(Stream.STDOUT, b"out")
        return True

    async def write_stdin(self, data: bytes) -> None:
        self.calls.append("write")
        if self.error is not None:
            self.ended.set()
            raise self.error
        if self.closed.is_set():
            raise StdinClosedError("closed")
        if self.blocks:
            await self.closed.wait()
            raise StdinClosedError("closed while waiting")
        if self.reads is not None and len(self.written) + len(data) > self.reads:
            self.ended.set()
            raise StdinClosedError("it stopped reading")
        self.written += data
        self.pieces.append(len(data))

    async def close_stdin(self) -> None:
        self.calls.append("close_stdin")
        self.closed.set()
        self.ended.set()

    async def stop(self, output: OutputCollector) -> None:
        self.calls.append("stop")

    async def signal(self) -> None:
        self.closed.set()
        self.ended.set()

    async def exit_code(self) -> int:
        return 0

    async def abandon(self) -> int | None:
        self.calls.append("abandon")
        return None

    async def close(self) -> None:
        self.calls.append("close")


async def drive(run: Any, stdin: bytes) -> Any:
    return await acommands.run_to_completion(
        run, "cmd", OutputCollector(limit=1000), 5.0, time.monotonic(), None, stdin=stdin
    )


async def test_execute_feeds_the_input_in_pieces_then_ends_it() -> None:
    data = os.urandom(CHUNK * 2 + 5)
    run = AsyncStdinRun()
    result = await drive(run, data)
    assert (result.return_code, result.stdout) == (0, "out")
    assert bytes(run.written) == data
    assert run.pieces == [CHUNK, CHUNK, 5], "one provider call per piece of at most STDIN_CHUNK"
    assert "close_stdin" in run.calls
    assert run.calls[-1] == "close"


async def test_a_command_that_stops_reading_loses_the_rest_quietly() -> None:
    run = AsyncStdinRun(reads=CHUNK)
    result = await drive(run, b"x" * (CHUNK * 3))
    assert result.return_code == 0
    assert len(run.written) == CHUNK
    assert run.calls.count("write") == 2, "no write after the command stopped reading"


async def test_a_command_that_ends_without_reading_ends_the_call() -> None:
    run = AsyncStdinRun(blocks=True)  # its writes wait for room that never comes
    result = await asyncio.wait_for(drive(run, b"x" * 10), 5)
    assert result.return_code == 0
    assert run.calls[-1] == "close"


async def test_a_failing_write_is_no_silent_success() -> None:
    run = AsyncStdinRun(error=ProviderError("the engine broke"))
    with pytest.raises(ProviderError):
        await drive(run, b"x")
    assert run.calls[-1] == "close"


async def test_the_handle_writes_in_pieces_and_refuses_once_stdin_is_closed() -> None:
    run = AsyncStdinRun()
    handle = AsyncProcessHandle("cat", run, OutputCollector(limit=1000), stdin=True)
    await handle.write_stdin("h\u00e9")
    await handle.write_stdin(b"x" * (CHUNK + 1))
    assert bytes(run.written[:3]) == "h\u00e9".encode()
    assert run.pieces == [3, CHUNK, 1]
    with pytest.raises(InvalidArgumentError):
        await handle.write_stdin(42)  # type: ignore[arg-type]
    await handle.close_stdin()
    await handle.close_stdin()  # idempotent: the run hears it once
    assert run.calls.count("close_stdin") == 1
    with pytest.raises(StdinClosedError, match="close_stdin"):
        await handle.write_stdin("late")
    assert (await handle.wait(timeout=5)).return_code == 0
    with pytest.raises(StdinClosedError):
        await handle.write_stdin("after the end")


async def test_a_handle_without_stdin_never_calls_the_run() -> None:
    run = AsyncStdinRun()
    handle = AsyncProcessHandle("cat", run, OutputCollector(limit=1000))
    with pytest.raises(StdinClosedError, match="without stdin=True"):
        await handle.write_stdin("x")
    await handle.close_stdin()
    assert run.calls == []
    await handle.kill()


class SyncBlockingRun:
    """The sync flavour: a write blocks its thread until close_stdin() comes from another thread."""

    def __init__(self) -> None:
        self.id = "run-sync"
        self.closed = threading.Event()
        self.calls: list[str] = []

    def pid(self) -> int | None:
        return None

    def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        return True

    def write_stdin(self, data: bytes) -> None:
        self.closed.wait(10)
        raise StdinClosedError("closed while waiting")

    def close_stdin(self) -> None:
        self.calls.append("close_stdin")
        self.closed.set()

    def stop(self, output: OutputCollector) -> None: ...

    def signal(self) -> None: ...

    def exit_code(self) -> int:
        return 0

    def abandon(self) -> int | None:
        return None

    def close(self) -> None:
        self.calls.append("close")


def test_the_sync_feed_in_its_thread_is_stopped_when_the_command_ends() -> None:
    run = SyncBlockingRun()
    started = time.monotonic()
    result = scommands.run_to_completion(
        run,  # type: ignore[arg-type]
        "cmd",
        OutputCollector(limit=1000),
        5.0,
        time.monotonic(),
        None,
        stdin=b"x" * 10,
    )
    assert result.return_code == 0
    assert time.monotonic() - started < 5, "the feed's thread held the call"
    assert run.calls[-1] == "close"
    handle = ProcessHandle("cat", SyncBlockingRun(), OutputCollector(limit=1000))  # type: ignore[arg-type]
    with pytest.raises(StdinClosedError):
        handle.write_stdin("x")


# -- the _acompat primitives ------------------------------------------------------------------------------


async def test_awritable_says_when_a_pipe_has_room() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        assert await ac.awritable(write_end, 1.0)
        with contextlib.suppress(BlockingIOError):  # fill the pipe
            while True:
                os.write(write_end, b"x" * 65536)
        started = time.monotonic()
        assert not await ac.awritable(write_end, 0.1), "a full pipe has no room"
        assert time.monotonic() - started >= 0.09
        os.read(read_end, 1 << 20)
        assert await ac.awritable(write_end, 1.0)
        assert ac.writable(write_end, 1.0)
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_async_lock_excludes_and_lock_twin_too() -> None:
    lock, inside, most = ac.AsyncLock(), 0, 0

    async def worker() -> None:
        nonlocal inside, most
        async with lock:
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(5)))
    assert most == 1
    with ac.Lock():
        pass
