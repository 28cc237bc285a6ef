"""`FakeE2B`: the control plane and envd of E2B on one port of 127.0.0.1, in a background thread with its
own event loop. Requests that carry `E2b-Sandbox-Id` go to envd, the others to the control plane, both
behind the fault injector."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from tests.providers._fakebox import BackgroundFake, wait_answered

from ._control import ControlPlane
from ._envd import Envd
from ._faults import Faults, with_faults
from ._http import ASGIApp, HTTPServer, Receive, Scope, Send
from ._sandbox import Cloud


class FakeE2B(BackgroundFake):
    """An in-process E2B for the unmodified `e2b` SDK: point the SDK at it with `fake.env`.

    >>> with FakeE2B() as fake:
    ...     os.environ.update(fake.env)
    ...     sandbox = e2b.Sandbox.create()

    `root` holds the sandboxes' and snapshots' directories (a temporary directory, removed on `stop`, when
    None). `templates` adds template names that `create` accepts besides `base` and snapshot ids."""

    NAME = "fake-e2b"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        api_key: str | None = None,
        templates: Iterable[str] = (),
        port: int = 0,
    ) -> None:
        super().__init__(root)
        self.api_key = api_key or "e2b_" + secrets.token_hex(20)
        self._templates = set(templates)
        self._port = port
        self._faults = Faults()
        self._cloud: Cloud | None = None

    async def _open(self) -> Callable[[], Awaitable[None]]:
        self._cloud = cloud = Cloud(self.root, self._templates)
        control, envd = ControlPlane(cloud, self.api_key), Envd(cloud)

        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            has_sandbox = any(name.lower() == b"e2b-sandbox-id" for name, _ in scope["headers"])
            await (envd if has_sandbox else control)(scope, receive, send)

        app: ASGIApp = with_faults(self._faults, route)
        server = HTTPServer(app, "127.0.0.1", self._port)
        self.port = await server.start()

        async def close() -> None:
            await cloud.shutdown()
            await server.close()

        return close

    # -- what tests and the adapter use

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK at the fake: the API and every sandbox's envd are the
        same plain-HTTP endpoint (E2B_SANDBOX_URL takes precedence over the domain-derived envd URL)."""
        return {
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_API_KEY": self.api_key,
            "E2B_DEBUG": "false",  # debug mode would skip the API and talk to localhost:49983
        }

    def inject(
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
        """Make the next `times` requests whose path matches the regex `route` (and HTTP `method`, if given)
        answer `status` (with `Retry-After: retry_after`), wait `delay` seconds first, or lose their
        connection after the first chunk of a streamed answer (`drop_stream`)."""
        self._faults.add(
            route,
            status=status,
            retry_after=retry_after,
            delay=delay,
            drop_stream=drop_stream,
            times=times,
            method=method,
        )

    def clear_faults(self) -> None:
        self._faults.clear()

    def requests(self, route_regex: str, *, method: str | None = None) -> int:
        """How many requests (so far) had a path matching `route_regex` (and the HTTP `method`, if given)."""
        return self._faults.count(route_regex, method)

    def wait_faulted(self, timeout: float = 30.0) -> None:
        """Wait until every request a fault applied to has been answered (a delayed create has made its
        sandbox, or not): what a test checks afterwards no longer changes under it."""
        wait_answered(lambda: self._faults.faulted_in_flight, timeout)

    def sandboxes(self) -> list[str]:
        """Ids of the live sandboxes (running or paused)."""
        return self._cloud.live_ids() if self._cloud is not None else []

    def metadata(self) -> dict[str, dict[str, str]]:
        """Each live sandbox's metadata, by its id (who made it, for a test's error message)."""
        boxes = list(self._cloud.sandboxes.values()) if self._cloud is not None else []
        return {box.id: dict(box.metadata) for box in boxes}

    def snapshots(self) -> list[str]:
        """Ids of the snapshots (which keep files only: see `SNAPSHOT_LIMITATION`)."""
        return list(self._cloud.snapshots) if self._cloud is not None else []

    def sandbox_dir(self, sandbox_id: str) -> Path:
        """Where a sandbox's files are: `home/user` is its /home/user, `tmp` its /tmp."""
        return self.root / "sandboxes" / sandbox_id
