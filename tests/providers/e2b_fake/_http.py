"""A small HTTP/1.1 server for ASGI apps, on h11 (installed with httpx), so the fake needs no ASGI server
package. HTTP/1.1 is what the SDK speaks to a plain `http://` URL: its pyqwest (reqwest) transports only
negotiate HTTP/2 through TLS ALPN, and file downloads are pinned to HTTP/1.1 anyway.

Each request runs with a `RequestLink` in a context variable: the envd side uses it to drop in-flight
streams of a sandbox that is killed or paused (as the real edge proxy does), and the fault injector to
close a connection mid-response."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import h11

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_SIZE = 256 * 1024
MAX_DRAIN = 4 * 1024 * 1024  # an unread request body up to this size is skipped to keep the connection


async def read_body(receive: Receive) -> bytes | None:
    """A request's whole body, or None when the client went away before sending all of it."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


class DropConnection(Exception):
    """Raised by an app (or from `send`) to close the connection at once, mid-response if need be."""


@dataclass(eq=False)
class RequestLink:
    """What a handler may know of and do to the connection serving its request."""

    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the client went away, or we dropped it
    dropped: bool = False
    _writer: asyncio.StreamWriter | None = None

    def drop(self) -> None:
        """Close the connection now: the client sees it end mid-response, as when a proxy drops it."""
        self.dropped = True
        self.gone.set()
        if self._writer is not None:
            self._writer.close()


CURRENT_LINK: contextvars.ContextVar[RequestLink] = contextvars.ContextVar("fake_e2b_request_link")


class HTTPServer:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=READ_SIZE)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                if not await self._handle(conn, reader, writer, event):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: h11.Request,
    ) -> bool:
        """Serve one request; False when the connection must be closed after it."""
        target = req.target.decode("latin-1")
        raw_path, _, query = target.partition("?")
        peer = writer.get_extra_info("peername") or ("127.0.0.1", 0)
        sock = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.http_version.decode(),
            "method": req.method.decode(),
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in req.headers],
            "client": (peer[0], peer[1]),
            "server": (sock[0], sock[1]),
            "extensions": {},
        }
        link = RequestLink(_writer=writer)
        body_done = False
        response_done = False
        pending_start: Message | None = None

        async def write(event: h11.Event) -> None:
            data = conn.send(event)
            if data and not writer.is_closing():
                writer.write(data)
                await writer.drain()

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                if conn.they_are_waiting_for_100_continue:
                    await write(h11.InformationalResponse(status_code=100, headers=[]))
                try:
                    event = await _next_event(conn, reader)
                except h11.RemoteProtocolError:
                    event = h11.ConnectionClosed()
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                if isinstance(event, h11.EndOfMessage):
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                link.gone.set()
                return {"type": "http.disconnect"}
            # The body is in: what comes next is either the end of the connection or (never, from the SDK)
            # a pipelined request, which h11 keeps for the next cycle.
            while not link.gone.is_set() and not response_done:
                data = await reader.read(READ_SIZE)
                if not data:
                    link.gone.set()
                    break
                conn.receive_data(data)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal pending_start, response_done
            if link.dropped:
                raise DropConnection
            if message["type"] == "http.response.start":
                pending_start = message  # sent with the first body, so a whole body gets a Content-Length
                return
            if message["type"] != "http.response.body" or response_done:
                return
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            try:
                if pending_start is not None:
                    headers = [(bytes(k), bytes(v)) for k, v in pending_start.get("headers", [])]
                    if not more and not any(k.lower() == b"content-length" for k, _ in headers):
                        headers.append((b"content-length", str(len(body)).encode()))
                    await write(h11.Response(status_code=pending_start["status"], headers=headers))
                    pending_start = None
                if body:
                    await write(h11.Data(data=body))
                if not more:
                    await write(h11.EndOfMessage())
                    response_done = True
            except (ConnectionError, h11.LocalProtocolError):
                link.gone.set()
                raise DropConnection from None

        token = CURRENT_LINK.set(link)
        try:
            await self._app(scope, receive, send)
        except DropConnection:
            return False
        except Exception:
            log.exception("fake e2b: unhandled error serving %s %s", scope["method"], scope["path"])
            if conn.our_state is h11.SEND_RESPONSE and not link.dropped:
                with contextlib.suppress(Exception):
                    await write(h11.Response(status_code=500, headers=[(b"content-length", b"0")]))
                    await write(h11.EndOfMessage())
                    response_done = True
            return False
        finally:
            CURRENT_LINK.reset(token)
        if not response_done:
            if conn.our_state is h11.SEND_RESPONSE:  # the app ended without answering
                await write(h11.Response(status_code=500, headers=[(b"content-length", b"0")]))
                await write(h11.EndOfMessage())
            else:
                return False
        return await _drain_request(conn, reader)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await reader.read(READ_SIZE))


async def _drain_request(conn: h11.Connection, reader: asyncio.StreamReader) -> bool:
    """Skip what the app left of the request body, so the connection can serve the next request."""
    skipped = 0
    while conn.their_state is h11.SEND_BODY and skipped <= MAX_DRAIN:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            skipped += len(event.data)
        elif not isinstance(event, h11.EndOfMessage):
            return False
    return conn.their_state is h11.DONE
