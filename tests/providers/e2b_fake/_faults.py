"""Fault injection and request counting: the one place where the fake misbehaves on purpose.

A rule matches requests by a regex searched in the HTTP path (Connect-RPC paths look like
`/process.Process/Start`) and, optionally, the HTTP method; it applies to the next `times` matching
requests, oldest rule first. Every request is counted, whether a rule took it or not."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass

from ._http import CURRENT_LINK, ASGIApp, DropConnection, Message, Receive, Scope, Send


@dataclass
class Fault:
    pattern: re.Pattern[str]
    method: str | None
    status: int | None
    retry_after: float | None
    delay: float | None
    drop_stream: bool
    remaining: int

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


class Faults:
    """Thread-safe: the test thread adds rules and reads counts while the server thread takes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._rules: list[Fault] = []
        self._seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.faulted_in_flight = 0  # requests a fault applies to, not yet answered (delayed ones)

    def add(
        self,
        route: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        delay: float | None = None,
        drop_stream: bool = False,
        times: int = 1,
        method: str | None = None,
    ) -> None:
        if status is None and delay is None and not drop_stream:
            raise ValueError("a fault needs status=, delay= or drop_stream=True")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status, got {status}")
        if times < 1:
            raise ValueError("times must be at least 1")
        rule = Fault(
            re.compile(route),
            method.upper() if method else None,
            status,
            retry_after,
            delay,
            drop_stream,
            times,
        )
        with self.lock:
            self._rules.append(rule)

    def count(self, route: str, method: str | None = None) -> int:
        pattern = re.compile(route)
        wanted = method.upper() if method else None
        with self.lock:
            return sum(
                1
                for m, path in self._seen
                if (wanted is None or m == wanted) and pattern.search(path) is not None
            )

    def clear(self) -> None:
        with self.lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """Count the request and hand out the first rule that still applies to it."""
        with self.lock:
            self._seen.append((method, path))
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                    self.faulted_in_flight += 1
                    return rule
        return None


def with_faults(faults: Faults, app: ASGIApp) -> ASGIApp:
    async def faulty(scope: Scope, receive: Receive, send: Send) -> None:
        fault = faults.take(scope["method"], scope["path"])
        if fault is None:
            await app(scope, receive, send)
            return
        try:  # (take() counted it in flight)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                await _answer_error(fault, receive, send)
            elif fault.drop_stream:
                await app(scope, receive, _dropping(send))
            else:
                await app(scope, receive, send)
        finally:
            with faults.lock:
                faults.faulted_in_flight -= 1

    return faulty


async def _answer_error(fault: Fault, receive: Receive, send: Send) -> None:
    """The JSON error body E2B's API and edge proxy answer with; the SDK reads `message` (and for envd
    RPCs maps the int `code` like a plain HTTP status)."""
    while True:  # read the request first, so the connection stays usable
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    status = fault.status
    assert status is not None
    headers = [(b"content-type", b"application/json")]
    if fault.retry_after is not None:
        value = fault.retry_after
        text = str(int(value)) if float(value).is_integer() else str(value)
        headers.append((b"retry-after", text.encode()))
    body = json.dumps({"code": status, "message": f"fault injected by the fake: HTTP {status}"}).encode()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _dropping(send: Send) -> Send:
    """Close the connection after the first chunk of a streamed body (for a Connect stream: the first
    event); an answer sent in one piece never reaches the client."""
    dropped = False

    async def dropping_send(message: Message) -> None:
        nonlocal dropped
        if dropped:
            raise DropConnection
        if message["type"] == "http.response.body":
            if not message.get("more_body"):
                dropped = True
                CURRENT_LINK.get().drop()
                raise DropConnection
            if message.get("body"):
                await send(message)
                dropped = True
                CURRENT_LINK.get().drop()
                raise DropConnection
        await send(message)

    return dropping_send
