"""Local ports: port_address reaches a server in the sandbox, with the host's network (127.0.0.1:PORT) and
with a network namespace of its own (network "none": a forward grainchain relays into that namespace,
grainchain/providers/local/_ports.py). Both clients, both isolation modes where the network allows."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
from conftest import SandboxFactory

from grainchain import SandboxConfig
from grainchain.errors import CapabilityError, InvalidArgumentError
from grainchain.providers.local import _ports as ports
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.sync import Sandbox

NEEDS_NAMESPACES = pytest.mark.skipif(
    namespaces_unavailable() is not None and os.environ.get("GRAINCHAIN_REQUIRE_NAMESPACES") != "1",
    reason=f"no namespaces here: {namespaces_unavailable()}",
)
NEEDS_ROOT = pytest.mark.skipif(ports.unavailable() is not None, reason=str(ports.unavailable()))


def free_port() -> int:
    """A port nothing on the host listens on now (the host-network sandboxes share the host's ports)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(port: int, token: str) -> str:
    """A background command serving `token` at /index.html on 127.0.0.1:port of the sandbox."""
    return (
        f"mkdir -p www && printf %s {token} > www/index.html && "
        f"exec python3 -m http.server {port} --bind 127.0.0.1 --directory www"
    )


def fetch(address: str, within: float = 15) -> str:
    """The body of http://address/index.html, retried while nothing answers yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/index.html", timeout=2) as response:
                return str(response.read().decode())
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answers at {address}: {exc}") from exc
            time.sleep(0.1)


def refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def relay_threads() -> list[str]:
    return [
        t.name for t in threading.enumerate() if t.name.startswith(("grainchain-port-", "grainchain-netns"))
    ]


MODES = [
    pytest.param({"isolation": "none"}, id="unisolated-host"),
    pytest.param({"isolation": "namespaces"}, id="isolated-host", marks=NEEDS_NAMESPACES),
    pytest.param(
        {"isolation": "namespaces", "network": "none"},
        id="isolated-none",
        marks=[NEEDS_NAMESPACES, NEEDS_ROOT],
    ),
]


@pytest.mark.parametrize("provider_config", MODES)
async def test_port_address_reaches_a_server_in_the_sandbox(
    make_sandbox: SandboxFactory, provider_config: dict[str, Any]
) -> None:
    port = free_port()
    token = os.urandom(8).hex()
    sandbox = await make_sandbox(SandboxConfig(ports=[port], provider_config=provider_config))
    server = await sandbox.start_process(serve(port, token))
    address = await sandbox.port_address(port)
    if provider_config.get("network") == "none":
        assert address.startswith("127.0.0.1:")
        assert address != f"127.0.0.1:{port}"  # a forward
    else:
        assert address == f"127.0.0.1:{port}"
    assert fetch(address) == token
    assert fetch(address) == token  # every connection is relayed, not only the first
    assert await sandbox.port_address(port) == address  # one forward per port
    with pytest.raises(InvalidArgumentError, match=r"not in SandboxConfig\.ports"):
        await sandbox.port_address(port + 1 if port < 65535 else port - 1)
    await server.kill()


@NEEDS_NAMESPACES
@NEEDS_ROOT
def test_a_sandbox_without_network_sees_neither_the_host_nor_another_sandbox() -> None:
    port = free_port()
    token = os.urandom(8).hex()
    offline = SandboxConfig(ports=[port], provider_config={"isolation": "namespaces", "network": "none"})
    with Sandbox("local", offline) as first, Sandbox("local", offline) as second:
        first.start_process(serve(port, token))
        assert fetch(first.port_address(port)) == token
        assert refused(f"127.0.0.1:{port}")  # not on the host's loopback
        probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2)'"
        result = second.execute(probe)
        assert result.return_code != 0, result
        assert "ConnectionRefusedError" in result.stderr, result
        # the second's forward of the same port reaches its own (empty) namespace: the connection ends
        url = f"http://{second.port_address(port)}/index.html"
        with pytest.raises(OSError, match=r"Remote end closed|reset"), urllib.request.urlopen(url, timeout=2):
            pass


@NEEDS_NAMESPACES
@NEEDS_ROOT
def test_the_forward_ends_with_the_sandbox_and_survives_a_restore() -> None:
    port = free_port()
    config = SandboxConfig(ports=[port], provider_config={"isolation": "namespaces", "network": "none"})
    with Sandbox("local", config) as sandbox:
        snapshot = sandbox.create_snapshot()
        sandbox.start_process(serve(port, "before"))
        address = sandbox.port_address(port)
        assert fetch(address) == "before"
        sandbox.restore_snapshot(snapshot)  # ends every process, the holder (and its namespace) too
        assert sandbox.execute("echo x").stdout == "x\n"  # a new holder, a new network namespace
        sandbox.start_process(serve(port, "after"))
        assert fetch(address) == "after"  # the same forward, into the new namespace
        assert relay_threads()
        host, _, port_text = address.rpartition(":")
        idle = socket.create_connection((host, int(port_text)), timeout=5)  # relayed, and never used
    with idle, contextlib.suppress(ConnectionResetError):  # close() ended it too (end of file, or a reset)
        assert idle.recv(1) == b""
    assert refused(address)
    deadline = time.monotonic() + 5
    while relay_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not relay_threads()


@NEEDS_NAMESPACES
def test_a_forward_needs_root_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 1000)
        reason = ports.unavailable()
    assert reason is not None
    assert "needs root" in reason
    monkeypatch.setattr(ports, "unavailable", lambda: reason)
    config = SandboxConfig(ports=[8080], provider_config={"isolation": "namespaces", "network": "none"})
    with pytest.raises(CapabilityError, match="needs root"):
        Sandbox("local", config).start()
    with Sandbox("local", SandboxConfig(ports=[8080])) as sandbox:  # the host's network needs no forward
        assert sandbox.port_address(8080) == "127.0.0.1:8080"
