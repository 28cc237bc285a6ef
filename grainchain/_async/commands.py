"""Command plumbing every adapter shares: what an adapter hands over once it has started a command (a
CommandRun), the one finish step, the driver of execute(), and the registry of a sandbox's live handles.

An adapter only starts commands (`AsyncSandboxAdapter._launch`) and says how to reach one (CommandRun);
deadlines, the output cap, OOM reports, kills on interruption and closing happen here, once for everyone.
Background handles (grainchain/_async/process.py) are driven by the same CommandRun.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from grainchain._acompat import AsyncTask, afail_after, astart_task
from grainchain._commands import settle
from grainchain._output import OutputCollector
from grainchain.errors import GrainchainError, StdinClosedError
from grainchain.models import ExecutionResult

if TYPE_CHECKING:
    from grainchain._async.adapter import AsyncSandboxAdapter
    from grainchain._async.process import AsyncProcessHandle


class CommandRun(Protocol):
    """A started command, as its adapter reaches it (a host process, an engine exec, an SDK's process).

    The plumbing calls pump first; then exit_code (it ended by itself) or stop (deadline or overflow);
    abandon instead when interrupted (cancelled, a callback raised); close always, last."""

    # names the command for good: the handle's `id` (an exec id, an SDK's process id, a marker)
    id: str

    async def pid(self) -> int | None:
        """The process id a background handle shows, None when the provider has none."""
        ...

    async def pump(self, output: OutputCollector, deadline: float | None) -> bool:
        """Feed the output to `output` until the command has ended and its output is all read (True), or
        until `deadline` (time.monotonic()) passes or the output overflows (False: still running)."""
        ...

    async def stop(self, output: OutputCollector) -> None:
        """Kill the command and everything it started, and wait until it has ended; collect what it wrote
        before dying unless the output overflowed. exit_code() works afterwards."""
        ...

    async def signal(self) -> None:
        """Kill the command and everything it started, without waiting (pump then sees the end)."""
        ...

    async def exit_code(self) -> int:
        """The exit code of the ended command (128+N when signal N killed it)."""
        ...

    async def abandon(self) -> int | None:
        """Interrupted: kill the command and everything it started, best effort; its exit code if known."""
        ...

    async def close(self) -> None:
        """Release what reaching the command took (pipes, streams); idempotent."""
        ...

    async def write_stdin(self, data: bytes) -> None:
        """Write all of `data` to the command's standard input (launched with stdin=True), waiting while
        the command does not read; StdinClosedError once close_stdin() or close() was called, or the
        command no longer reads it (it ended, or closed its stdin)."""
        ...

    async def close_stdin(self) -> None:
        """End of file on the command's standard input (and a write_stdin waiting meanwhile stops with
        StdinClosedError); idempotent, also after the command ended."""
        ...


class OomWatch:
    """Whether the kernel OOM-killed a process of the sandbox while one command ran; `baseline` is what
    the adapter's `_oom_baseline()` said before it started."""

    def __init__(self, adapter: AsyncSandboxAdapter, baseline: int) -> None:
        self.adapter = adapter
        self.baseline = baseline

    async def killed(self) -> bool:
        return await self.adapter._oom_killed_since(self.baseline)


async def finish_command(
    command: str,
    output: OutputCollector,
    exit_code: int | None,
    elapsed: float,
    *,
    timeout: float | None = None,
    oom: OomWatch | None = None,
) -> ExecutionResult:
    """The finish step of execute() and of a handle's wait(): grainchain._commands.settle, with the OOM
    evidence asked for only when the command failed (asking may cost a call to the backend)."""
    failed = exit_code not in (None, 0) and not output.overflowed
    oom_killed = failed and oom is not None and await oom.killed()
    return settle(
        command,
        output,
        exit_code=exit_code,
        elapsed=elapsed,
        timeout=timeout,
        oom_killed=oom_killed,
        memory_limit=0 if oom is None else int(oom.adapter.config.memory_limit or 0),
        provider=type(oom.adapter).provider_name if oom is not None else "",
    )


# stdin is written in pieces of this size: one call of a provider's SDK each (envd takes at most 4 MiB)
STDIN_CHUNK = 1 << 20


def feed_stdin(run: CommandRun, data: bytes) -> AsyncTask:
    """Write execute()'s input to the command, then end it, concurrently with the output pump (a command
    that writes while it reads would otherwise fill its output pipe and never read the rest). A command that
    stops reading early only loses the rest, as a shell pipeline's writer would (StdinClosedError ends the
    feed quietly)."""

    async def feed() -> None:
        with contextlib.suppress(StdinClosedError):
            for start in range(0, len(data), STDIN_CHUNK):
                await run.write_stdin(data[start : start + STDIN_CHUNK])
        await run.close_stdin()

    return astart_task(feed)


async def run_to_completion(
    run: CommandRun,
    command: str,
    output: OutputCollector,
    timeout: float | None,
    started: float,
    oom: OomWatch | None = None,
    stdin: bytes | None = None,
) -> ExecutionResult:
    """Wait for a started command; on timeout or overflow kill it with everything it started and raise
    with the partial output; interrupted, kill it. `started` (time.monotonic()): when its start began,
    what the deadline and the execution time count from. `stdin`: the input of a command launched with
    stdin=True, fed meanwhile. The run is closed in every case."""
    deadline = None if timeout is None else started + timeout
    settled = False  # ended by itself, or stopped: nothing of it runs any more
    feeder = None if stdin is None else feed_stdin(run, stdin)
    try:
        try:
            # a pump that overruns its deadline (an SDK call that hangs) is cancelled; a sync pump must
            # honour the deadline itself
            async with afail_after(None if deadline is None else deadline - time.monotonic()):
                finished = await run.pump(output, deadline)
        except TimeoutError:
            finished = False
        code: int | None = None
        if finished:
            settled = True
            if feeder is not None:  # it is over: a feed still waiting for it to read stops
                await run.close_stdin()
            code = await run.exit_code()
        else:
            # killed first: a close_stdin could wait behind a write the command will never read
            await run.stop(output)
            settled = True
            if feeder is not None:
                await run.close_stdin()
        output.finish()
        if feeder is not None:
            await feeder.join()
        return await finish_command(
            command, output, code, time.monotonic() - started, timeout=timeout, oom=oom
        )
    finally:
        try:
            if not settled:  # interrupted (cancelled, a callback raised …): leave nothing of it running
                await run.abandon()
        finally:
            try:
                if feeder is not None and not feeder.done():
                    await run.close_stdin()
                    with contextlib.suppress(Exception):  # the interruption is what the caller hears
                        await feeder.join()
            finally:
                await run.close()


class HandleRegistry:
    """The background processes a sandbox started and may still run: close(), terminate() and restores
    end them through kill_all()."""

    def __init__(self) -> None:
        self._handles: list[AsyncProcessHandle] = []

    def add(self, handle: AsyncProcessHandle) -> None:
        self._handles = [h for h in self._handles if h.is_running] + [handle]

    def running(self) -> list[AsyncProcessHandle]:
        return [h for h in self._handles if h.is_running]

    def __iter__(self) -> Iterator[AsyncProcessHandle]:
        return iter(list(self._handles))

    def __len__(self) -> int:
        return len(self._handles)

    def clear(self) -> None:
        self._handles.clear()

    async def kill_all(self) -> None:
        """Kill every process tree (one that cannot be killed does not spare the others), then forget them."""
        for handle in list(self._handles):
            with contextlib.suppress(GrainchainError):
                await handle.kill()
        self._handles.clear()
