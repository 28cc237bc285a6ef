"""`FakeModal`: Modal's control plane and the sandboxes' task command router, two gRPC services on one
grpclib server on one port of 127.0.0.1, in a background thread with its own event loop."""

from __future__ import annotations

import re
import secrets
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

from grpclib.const import Status
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from modal_proto import api_grpc, api_pb2, task_command_router_grpc

from tests.providers._fakebox import BackgroundFake, wait_answered

from ._cloud import Cloud
from ._control import ControlPlane
from ._guard import Fault, Faults, Service, Tokens
from ._router import Router


class _Server(Server):
    """A grpclib server that can also drop its connections (grpclib's `close` leaves them open, and the
    SDK keeps its connections)."""

    _protocols: weakref.WeakSet[H2Protocol]

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        if not hasattr(self, "_protocols"):
            self._protocols = weakref.WeakSet()
        self._protocols.add(protocol)
        return protocol

    def drop_connections(self) -> None:
        for protocol in list(getattr(self, "_protocols", ())):
            if hasattr(protocol, "connection"):
                protocol.connection.close()


class FakeModal(BackgroundFake):
    """An in-process Modal for the unmodified `modal` SDK: point the SDK at it with `fake.env`.

    >>> with FakeModal() as fake:
    ...     os.environ.update(fake.env)
    ...     app = modal.App.lookup("grainchain", create_if_missing=True)
    ...     sandbox = modal.Sandbox.create(app=app)

    `root` holds the sandboxes' and images' directories (a temporary directory, removed on `stop`, when
    None, unless `keep_root`). The control plane accepts `token_id` and `token_secret` only (random ones
    by default)."""

    NAME = "fake-modal"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        port: int = 0,
        keep_root: bool = False,
    ) -> None:
        super().__init__(root, keep_root=keep_root)
        self.tokens = Tokens(
            token_id or "ak-" + secrets.token_hex(11), token_secret or "as-" + secrets.token_hex(11)
        )
        self._port = port
        self._faults = Faults()
        self._cloud: Cloud | None = None

    async def _open(self) -> Callable[[], Awaitable[None]]:
        # (proto given: grpclib sets TCP_NODELAY only on sockets that say IPPROTO_TCP, and without it the
        # second of two concurrent streams' answers waits ~40 ms for a delayed ACK)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        self._cloud = cloud = Cloud(self.root, self.url)
        control = Service(
            api_grpc.ModalClientBase, ControlPlane(cloud, self.tokens), self._faults, self.tokens.check_client
        )
        router = Service(
            task_command_router_grpc.TaskCommandRouterBase,
            Router(cloud),
            self._faults,
            self.tokens.check_router,
        )
        server = _Server([control, router])
        await server.start(sock=sock)

        async def close() -> None:
            await cloud.shutdown()
            server.close()
            await server.wait_closed()
            server.drop_connections()

        return close

    # -- what tests and the adapter use

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK at the fake (plain HTTP/2: the SDK allows it, and a
        plain-HTTP command router, for a server on localhost), with no config file of the user's."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.tokens.token_id,
            "MODAL_TOKEN_SECRET": self.tokens.token_secret,
            "MODAL_CONFIG_PATH": str(self.root / "no-modal.toml"),
        }

    def inject(
        self,
        rpc: str,
        *,
        status: Status | None = None,
        message: str | None = None,
        delay: float | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls whose path (`/modal.client.ModalClient/SandboxCreateV2`, ...) matches
        the regex `rpc` answer `status` (with `message`), and/or answer `delay` seconds late."""
        if status is None and delay is None:
            raise ValueError("a fault needs status= or delay=")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._faults.lock:
            self._faults.rules.append(Fault(re.compile(rpc), status, message, delay, times))

    def clear_faults(self) -> None:
        with self._faults.lock:
            self._faults.rules.clear()

    def calls(self, rpc: str) -> int:
        """How many calls (so far) had a path matching the regex `rpc`."""
        pattern = re.compile(rpc)
        with self._faults.lock:
            return sum(1 for path in self._faults.paths if pattern.search(path))

    def wait_faulted(self, timeout: float = 30.0) -> None:
        """Wait until every call a fault applied to has been answered (a delayed create has made its
        sandbox, or not): what a test checks afterwards no longer changes under it."""
        wait_answered(lambda: self._faults.in_flight, timeout)

    def sandboxes(self) -> list[str]:
        """Ids of the running sandboxes."""
        return list(self._cloud.live()) if self._cloud is not None else []

    def tags(self) -> dict[str, dict[str, str]]:
        """Each running sandbox's tags, by its id."""
        boxes = self._cloud.live() if self._cloud is not None else {}
        return {sandbox_id: dict(box.tags) for sandbox_id, box in boxes.items()}

    def definitions(self) -> dict[str, api_pb2.Sandbox]:
        """Each running sandbox's definition as SandboxCreateV2 sent it (timeouts, resources, network)."""
        boxes = self._cloud.live() if self._cloud is not None else {}
        return {sandbox_id: box.definition for sandbox_id, box in boxes.items()}

    def builds(self) -> list[str]:
        """The image of every image build started so far, in order (a cached image is not built again)."""
        return list(self._cloud.builds) if self._cloud is not None else []

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """Where a sandbox's files are: `upper` holds what it wrote outside /tmp (its overlay's upper
        directory: `/etc/x` is `upper/etc/x`), `tmp` is its /tmp."""
        return self.root / "sandboxes" / sandbox_id
