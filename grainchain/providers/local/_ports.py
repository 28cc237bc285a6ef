"""Forwarded ports of a local sandbox with its own network namespace (provider_config network "none").

A `Forward` listens on 127.0.0.1:<ephemeral> on the host and relays each connection to 127.0.0.1:PORT in
the sandbox's network namespace. The socket on the sandbox's side is made by a thread that has joined that
namespace with setns(2) (a socket stays in the namespace it was made in, whatever thread uses it later);
the namespace is looked up again for every connection, because a restore or a command that killed every
process of the sandbox starts a new holder, with a new namespace.

Threads, not asyncio: the blocking client has no event loop, and a relay must outlive any one call.
Joining a namespace owned by another user namespace needs CAP_SYS_ADMIN there (`unavailable()` says
when: non-root sandboxes have a user namespace of their own).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_CHUNK = 256 * 1024
_libc: ctypes.CDLL | None = None


def unavailable() -> str | None:
    """Why no port can be forwarded into an isolated sandbox's network namespace here, or None."""
    if os.geteuid() != 0:
        return (
            "a forwarded port (provider_config network 'none') needs root: the sandbox's network "
            "namespace belongs to its user namespace, which a multi-threaded client cannot join"
        )
    return None


def _setns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


def _socket_in(namespace: str) -> socket.socket:
    """A TCP socket made inside the network namespace at `namespace`, by a thread that ends right after (the
    caller's thread never changes namespace)."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _setns(namespace)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller
            made.append(exc)

    thread = threading.Thread(target=make, name="grainchain-netns", daemon=True)
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


class Forward:
    """127.0.0.1:<ephemeral> on the host, relayed to 127.0.0.1:`port` in the namespace `namespace()` names
    (a /proc/<pid>/ns/net path; None while the sandbox has no holder: the connection is then closed)."""

    def __init__(self, port: int, namespace: Callable[[], str | None]) -> None:
        self.port = port
        self._namespace = namespace
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._wake_r, self._wake_w = socket.socketpair()  # close() wakes every thread of the forward
        self._lock = threading.Lock()
        self._closed = False
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._acceptor = threading.Thread(target=self._accept, name=f"grainchain-port-{port}", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        if self._closed:
                            client.close()
                            return
                        self._sockets.add(client)
                        thread = threading.Thread(
                            target=self._serve,
                            args=(client,),
                            name=f"grainchain-port-{self.port}",
                            daemon=True,
                        )
                        self._threads.add(thread)
                        thread.start()  # under the lock: close() never joins a thread not started

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            namespace = self._namespace()
            if namespace is None:
                return  # no process of the sandbox runs: nothing listens
            upstream = _socket_in(namespace)
            with self._lock:
                if self._closed:
                    return
                self._sockets.add(upstream)
            upstream.connect(("127.0.0.1", self.port))
            self._pump(client, upstream)
        except OSError as exc:  # nothing listens in the sandbox, or a side went away: the connection ends
            if exc.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.EBADF):
                log.debug("port %s: %s", self.port, exc)
        except Exception:  # a relay thread must never die loudly: the connection ends, the forward stays
            log.debug("port %s: relay failed", self.port, exc_info=True)
        finally:
            with self._lock:
                self._sockets.discard(client)
                self._threads.discard(threading.current_thread())
                if upstream is not None:
                    self._sockets.discard(upstream)
            client.close()
            if upstream is not None:
                upstream.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copy both ways until both sides have ended; an end of one direction is passed on as a half close."""
        peer = {a: b, b: a}
        open_ends = {a, b}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while open_ends and not self._closed:
                for key, _ in sel.select():
                    source = key.fileobj
                    if source is self._wake_r:
                        return
                    assert isinstance(source, socket.socket)
                    data = source.recv(_CHUNK)
                    if data:
                        peer[source].sendall(data)
                        continue
                    sel.unregister(source)
                    open_ends.discard(source)
                    with contextlib.suppress(OSError):
                        peer[source].shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening (a connect is then refused), end every relayed connection and wait for the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = [self._acceptor, *self._threads]
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")  # never read: every select of the forward sees it from now on
        self._listener.close()
        with self._lock:
            live = list(self._sockets)
        for sock in live:  # wakes a thread blocked in sendall to a peer that reads nothing
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
        self._wake_r.close()
        self._wake_w.close()


class Forwards:
    """A sandbox's forwarded ports, made on first use (port_address) and closed with the sandbox."""

    def __init__(self, namespace: Callable[[], str | None]) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._open: dict[int, Forward] = {}

    def address(self, port: int) -> str:
        with self._lock:
            forward = self._open.get(port)
            if forward is None:
                forward = self._open[port] = Forward(port, self._namespace)
            return forward.address

    def close(self) -> None:
        with self._lock:
            forwards, self._open = list(self._open.values()), {}
        for forward in forwards:
            forward.close()
