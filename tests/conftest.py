"""Shared fixtures. Every test gets its own grainchain state dir and no config file, and fails if it leaves
a sandbox process running."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import _reliability
import pytest
from _procs import process_environments
from _support import AwaitableSync, close

from grainchain import AsyncSandbox, ProviderError, ProviderInfo, SandboxConfig, registry
from grainchain._commands import SANDBOX_MARKER
from grainchain.providers.local._hostproc import STATE_MARKER, state_tag
from grainchain.sync import Sandbox as SyncSandbox


@pytest.fixture(autouse=True)
def state_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("GRAINCHAIN_STATE_DIR", str(state))
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.delenv("GRAINCHAIN_DEFAULT_PROVIDER", raising=False)
    # No test reaches a cloud: no credentials or endpoints from the environment, and a domain that never
    # resolves (RFC 6761), so an SDK that was not pointed at an in-repo fake fails at once. (The SDKs' own
    # transports are not Python sockets: a socket guard would not see them.)
    for name in CLOUD_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_DOMAIN", "e2b.invalid")
    monkeypatch.setenv("MODAL_SERVER_URL", "https://modal.invalid")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))  # (not ~/.modal.toml)
    if request.node.get_closest_marker("live"):  # (`pytest -m live`: the real service, as the user set it)
        for name in (*CLOUD_ENVIRONMENT, *LIVE_ONLY):
            monkeypatch.delenv(name, raising=False)
            if name in LIVE_ENVIRONMENT:
                monkeypatch.setenv(name, LIVE_ENVIRONMENT[name])
    return state


CLOUD_ENVIRONMENT = (
    "E2B_API_KEY",
    "E2B_ACCESS_TOKEN",
    "E2B_API_URL",
    "E2B_SANDBOX_URL",
    "E2B_TEMPLATE",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MODAL_SERVER_URL",
    "MORPH_API_KEY",
    "MORPH_BASE_URL",
    "DAYTONA_API_KEY",
    "DAYTONA_API_URL",
)
# the cloud's variables as the test run found them: only tests marked `live` see them (tests/test_*_live.py)
LIVE_ONLY = ("E2B_DOMAIN", "MODAL_CONFIG_PATH")  # set by every other test to what reaches no cloud
LIVE_ENVIRONMENT = {name: os.environ[name] for name in (*CLOUD_ENVIRONMENT, *LIVE_ONLY) if name in os.environ}


def sandbox_processes(state: Path | None = None) -> list[int]:
    """PIDs of live processes started by grainchain sandboxes (they carry the sandbox marker); with `state`,
    only those of sandboxes under that state dir (their state tag says so, or their HOME or TMPDIR lies
    there), so that concurrent test runs on the same machine do not count."""
    found = []
    marker = SANDBOX_MARKER.encode() + b"="
    for pid, environ in process_environments():
        if not any(e.startswith(marker) for e in environ):
            continue
        if state is not None:
            tag = f"{STATE_MARKER}={state_tag(state.resolve())}".encode()
            prefixes = [f"{var}={state}".encode() for var in ("HOME", "TMPDIR")]
            if tag not in environ and not any(e.startswith(p) for e in environ for p in prefixes):
                continue
        found.append(pid)
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes(state_dir: Path) -> Any:
    yield
    deadline = time.monotonic() + 2
    while (left := sandbox_processes(state_dir)) and time.monotonic() < deadline:
        time.sleep(0.02)  # killed processes may take a moment to be reaped
    assert not left, f"sandbox processes left running after the test: {sorted(left)}"


SandboxFactory = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["async", "sync"])
async def make_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[SandboxFactory]:
    """make_sandbox(config=None, provider="local") → a started sandbox of the parametrized client."""
    opened: list[Any] = []

    async def make(config: SandboxConfig | None = None, provider: str = "local") -> Any:
        if request.param == "async":
            sandbox: Any = await AsyncSandbox(provider, config).start()
            sandbox.flavour = "async"
        else:
            sandbox = AwaitableSync(SyncSandbox(provider, config).start())
        opened.append(sandbox)
        return sandbox

    yield make
    for sandbox in opened:
        await close(sandbox)


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Any:
    return await make_sandbox()


MemoryProvider = Callable[..., ProviderInfo]


@pytest.fixture
def memory_provider() -> Iterator[MemoryProvider]:
    """memory_provider(features=None, **ProviderInfo fields) registers the in-memory fake provider "memory"
    (tests/providers/memory) with that declaration (default: native for what its adapter implements,
    unsupported for the rest) and returns it. Gone after the test, with every sandbox it made."""
    from tests.providers.memory import NAME, declaration, sdk

    def register(features: Mapping[str, str] | None = None, **fields: Any) -> ProviderInfo:
        info = declaration(features, **fields)
        registry.register(info, replace=True)
        return info

    sdk.reset()
    yield register
    with contextlib.suppress(ProviderError):  # (the test may have unregistered it itself)
        registry.unregister(NAME)
    sdk.reset()


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 that answers "hello" (bounded: stops with the test): its port.
    What network-policy tests try to reach (a cloud fake's sandboxes share the host's loopback)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The reliability suite's overview, when it ran: faults injected, data lost, leftovers, untyped
    errors, per provider (tests/_reliability.py)."""
    if lines := _reliability.summary():
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
