"""What a conformance test holds: a sandbox of either client behind one blocking interface, every call
recorded so that a hung test can say which operation hangs.

The sync client (`grainchain.sync.Sandbox`) is called directly. The async client (`grainchain.Sandbox`) runs
on one event loop in a thread of its own; a test's call waits for the coroutine there. Both run the same
tests, so a provider whose async adapter and sync adapter disagree fails one of the two runs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class ConformanceHang(Exception):
    """A conformance test ran longer than its hang limit (raised by the plugin's hang guard)."""


class _InFlight:
    """The operations running now, per thread: what the hang guard reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, list[tuple[str, float]]] = {}

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        ident = threading.get_ident()
        with self._lock:
            self._calls.setdefault(ident, []).append((what, time.monotonic()))
        try:
            yield
        finally:
            with self._lock:
                self._calls[ident].pop()

    def describe(self) -> str:
        now = time.monotonic()
        with self._lock:
            running = [(what, now - since) for calls in self._calls.values() for what, since in calls]
        if not running:
            return "no grainchain operation was running (the test itself hangs)"
        return "; ".join(f"{what} (running for {seconds:.1f} s)" for what, seconds in running)


IN_FLIGHT = _InFlight()


class _Loop:
    """One event loop in a daemon thread, for the async client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(
            target=self.loop.run_forever, name="grainchain-conformance-loop", daemon=True
        ).start()

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()


_loop: _Loop | None = None


def _event_loop() -> _Loop:
    global _loop
    if _loop is None:
        _loop = _Loop()
    return _loop


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _drive(value: Any) -> Any:
    return _event_loop().run(value) if inspect.isawaitable(value) else value


class Blocking:
    """A sandbox or process handle of either client, with blocking methods; calls are recorded."""

    def __init__(self, inner: Any, label: str) -> None:
        self._inner = inner
        self._label = label

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            shown = ", ".join([*map(_show, args), *(f"{k}={_show(v)}" for k, v in kwargs.items())])
            with IN_FLIGHT.calling(f"{self._label}.{name}({shown})"):
                result = _drive(attr(*args, **kwargs))
            if hasattr(result, "kill") and hasattr(result, "wait"):  # a process handle
                return Blocking(result, f"handle of {self._label}")
            return result

        return call

    def close(self) -> None:
        with IN_FLIGHT.calling(f"{self._label}.close()"):
            _drive(self._inner.aclose() if hasattr(self._inner, "aclose") else self._inner.close())

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        if hasattr(self._inner, "__aexit__"):
            if isinstance(exc[1], ConformanceHang):
                return  # the hung call still holds the event loop: closing would hang too (it leaks)
            with IN_FLIGHT.calling(f"{self._label}: leaving `async with`"):
                _drive(self._inner.__aexit__(*exc))
        else:
            with IN_FLIGHT.calling(f"{self._label}: leaving `with`"):
                self._inner.__exit__(*exc)


def sandbox_class(client: str) -> Any:
    if client == "async":
        from grainchain import Sandbox as AsyncSandbox

        return AsyncSandbox
    from grainchain.sync import Sandbox

    return Sandbox


def call(client: str, what: str, func: Callable[[], Any]) -> Any:
    """Run a client-level call (a classmethod such as connect or list_sandboxes), recorded and driven."""
    with IN_FLIGHT.calling(f"{client} client: {what}"):
        return _drive(func())
