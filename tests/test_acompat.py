"""grainchain/_acompat.py's primitives that remote adapters need, each in both flavours: sleep, the event
and the time bound (async: asyncio; sync: threads, and a bound the block honours itself)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from codegen.sync import REPLACEMENTS
from grainchain import _acompat as ac


def test_every_async_primitive_has_its_sync_twin() -> None:
    twins = {name: REPLACEMENTS[name] for name in ac.__all__ if name in REPLACEMENTS}
    assert {"asleep", "AsyncEvent", "afail_after"} <= set(twins)
    for name, twin in twins.items():
        assert hasattr(ac, twin), f"{name} maps to {twin}, which _acompat lacks"


# -- sleep ---------------------------------------------------------------------------------------------


async def test_asleep_pauses_the_task_not_the_loop() -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    started = time.monotonic()
    await asyncio.gather(ac.asleep(0.15), ticker())
    assert 0.15 <= time.monotonic() - started < 1.0
    assert len(ticks) == 5
    assert ticks[-1] - started < 0.15, "the loop stood still while asleep"
    started = time.monotonic()
    await ac.asleep(-1)  # negative: no pause
    assert time.monotonic() - started < 0.1


def test_sleep_pauses_the_thread() -> None:
    started = time.monotonic()
    ac.sleep(0.15)
    assert 0.15 <= time.monotonic() - started < 1.0
    started = time.monotonic()
    ac.sleep(-1)
    assert time.monotonic() - started < 0.1


# -- event ---------------------------------------------------------------------------------------------


async def test_async_event_wakes_a_waiter_or_times_out() -> None:
    event = ac.AsyncEvent()
    assert not event.is_set()
    started = time.monotonic()
    assert await event.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    asyncio.get_running_loop().call_later(0.05, event.set)
    started = time.monotonic()
    assert await event.wait(5) is True
    assert time.monotonic() - started < 1.0
    assert event.is_set()
    assert await event.wait(0) is True  # already set: at once, also with no time left
    assert await event.wait(-1) is True
    assert await event.wait() is True


async def test_async_event_wait_keeps_a_cancellation() -> None:
    waiting = asyncio.create_task(ac.AsyncEvent().wait(5))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_event_wakes_a_waiting_thread_or_times_out() -> None:
    event = ac.Event()
    assert not event.is_set()
    started = time.monotonic()
    assert event.wait(0.05) is False
    assert time.monotonic() - started >= 0.05
    threading.Timer(0.05, event.set).start()
    started = time.monotonic()
    assert event.wait(5) is True
    assert time.monotonic() - started < 1.0
    assert event.is_set()
    assert event.wait(-1) is True
    assert event.wait() is True


# -- time bound ----------------------------------------------------------------------------------------


async def test_afail_after_cancels_a_block_that_overruns() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with ac.afail_after(0.05):
            await asyncio.sleep(5)  # an SDK call that hangs
    assert time.monotonic() - started < 1.0
    with pytest.raises(TimeoutError):
        async with ac.afail_after(-1):  # already past: at the first await
            await asyncio.sleep(5)


async def test_afail_after_leaves_a_block_that_ends_in_time_alone() -> None:
    async with ac.afail_after(5) as deadline:
        await asyncio.sleep(0.01)
        remaining = deadline.remaining()
        assert remaining is not None
        assert 0 < remaining < 5
        assert not deadline.expired()
    async with ac.afail_after(None) as unbounded:
        await asyncio.sleep(0.01)
        assert unbounded.remaining() is None
        assert not unbounded.expired()


async def test_afail_after_keeps_a_cancellation_from_outside() -> None:
    async def bounded() -> None:
        async with ac.afail_after(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not a TimeoutError: the caller cancelled it
        await task


def test_fail_after_gives_the_block_its_deadline_and_interrupts_nothing() -> None:
    """Sync: nothing can interrupt a blocking call, so the block bounds itself with the Deadline."""
    event = ac.Event()
    started = time.monotonic()
    with ac.fail_after(0.05) as deadline:
        remaining = deadline.remaining()
        assert remaining is not None
        assert 0 < remaining <= 0.05
        assert event.wait(deadline.remaining()) is False  # a call taking the remaining time ends in time
        assert deadline.expired()
        assert deadline.remaining() == 0.0
        time.sleep(0.05)  # past it: still not interrupted, and nothing raised on leaving
    assert time.monotonic() - started >= 0.1
    with ac.fail_after(None) as unbounded:
        assert unbounded.remaining() is None
        assert not unbounded.expired()
