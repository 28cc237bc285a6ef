"""Lifecycle, provider resolution and the capability gate, for both clients: status and ids, closing,
keep_alive + reconnect, list_sandboxes, unknown and planned providers, and CapabilityError for what the
local provider does not do (raised before anything runs, leaving the sandbox usable)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _support import FLAVOURS, close, connect, list_sandboxes, new_sandbox, opened, run_ok, workspace_of

from grainchain import (
    CapabilityError,
    Feature,
    ProviderNotFoundError,
    ProviderUnavailableError,
    SandboxConfig,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxStatus,
    SnapshotKind,
    SupportLevel,
)

SANDBOX_ID = re.compile(r"local-[0-9a-f]{32}")


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sandbox_dirs(state_dir: Path) -> list[str]:
    base = state_dir / "local" / "sandboxes"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


# -- status, id, close -----------------------------------------------------------------------------------


async def test_status_and_id_through_the_lifecycle(flavour: str) -> None:
    sandbox = new_sandbox(flavour)
    assert sandbox.status is SandboxStatus.not_started  # nothing is being created yet
    assert sandbox.provider_name == "local"
    with pytest.raises(SandboxNotRunningError):
        sandbox.sandbox_id  # noqa: B018 - the property raises before the sandbox exists
    with pytest.raises(SandboxNotRunningError) as caught:
        await sandbox.execute("echo too early")
    assert caught.value.operation == "execute"

    await sandbox.start()
    try:
        assert sandbox.status is SandboxStatus.running
        assert SANDBOX_ID.fullmatch(sandbox.sandbox_id)
        await sandbox.start()  # idempotent while running
        assert sandbox.status is SandboxStatus.running
        sandbox_id = sandbox.sandbox_id
    finally:
        await close(sandbox)

    assert sandbox.status is SandboxStatus.closed
    assert sandbox.sandbox_id == sandbox_id  # still readable, e.g. for logs or connect()
    assert sandbox_id in repr(getattr(sandbox, "_target", sandbox))  # unwrapped: the client's own repr


async def test_status_while_starting_and_after_a_failed_start(
    flavour: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """creating only while start() runs; a failed start leaves not_started (nothing made), and start() may be
    called again."""
    from grainchain._async.backend import AsyncBackend
    from grainchain._sync.backend import Backend

    sandbox = new_sandbox(flavour)
    seen: list[SandboxStatus] = []
    failures = [RuntimeError("the first create fails")]

    def check() -> None:
        seen.append(sandbox.status)
        if failures:
            raise failures.pop()

    original_async, original_sync = AsyncBackend.create, Backend.create

    async def create_async(backend: Any, *args: Any) -> Any:
        check()
        return await original_async(backend, *args)

    def create_sync(backend: Any, *args: Any) -> Any:
        check()
        return original_sync(backend, *args)

    monkeypatch.setattr(AsyncBackend, "create", create_async)
    monkeypatch.setattr(Backend, "create", create_sync)
    with pytest.raises(RuntimeError):
        await sandbox.start()
    assert sandbox.status is SandboxStatus.not_started
    assert sandbox_dirs(state_dir) == []
    await sandbox.start()  # again, now that create works
    try:
        assert seen == [SandboxStatus.creating, SandboxStatus.creating]
        assert sandbox.status is SandboxStatus.running
    finally:
        await close(sandbox)
    assert sandbox.status is SandboxStatus.closed


async def test_detach_of_a_sandbox_never_started_changes_nothing(flavour: str) -> None:
    sandbox = new_sandbox(flavour)
    await sandbox.detach()
    assert sandbox.status is SandboxStatus.not_started


async def test_every_operation_after_close_raises_not_running(sandbox: Any) -> None:
    snapshot_id = await sandbox.create_snapshot()
    await close(sandbox)

    calls = {
        "execute": lambda: sandbox.execute("echo hi"),
        "start_process": lambda: sandbox.start_process("sleep 1"),
        "upload_file": lambda: sandbox.upload_file("f.txt", "x"),
        "download_file": lambda: sandbox.download_file("f.txt"),
        "list_files": lambda: sandbox.list_files(),
        "get_file_info": lambda: sandbox.get_file_info("f.txt"),
        "file_exists": lambda: sandbox.file_exists("f.txt"),
        "delete_file": lambda: sandbox.delete_file("f.txt"),
        "make_directory": lambda: sandbox.make_directory("d"),
        "create_snapshot": lambda: sandbox.create_snapshot(),
        "restore_snapshot": lambda: sandbox.restore_snapshot(snapshot_id),
        "list_snapshots": lambda: sandbox.list_snapshots(),
        "delete_snapshot": lambda: sandbox.delete_snapshot(snapshot_id),
    }
    for operation, call in calls.items():
        with pytest.raises(SandboxNotRunningError) as caught:
            await call()
        assert caught.value.operation == operation
        assert caught.value.provider == "local"
        assert "closed" in str(caught.value)

    await close(sandbox)  # closing twice is fine
    assert sandbox.status is SandboxStatus.closed
    with pytest.raises(SandboxNotRunningError):
        await sandbox.start()  # a closed sandbox does not come back; create a new one


async def test_context_manager_creates_and_closes(flavour: str, state_dir: Path) -> None:
    async with opened(flavour) as sandbox:
        assert sandbox.status is SandboxStatus.running
        ws = await workspace_of(sandbox)
        await sandbox.upload_file("f.txt", "x")
        assert sandbox_dirs(state_dir) == [sandbox.sandbox_id]

    assert sandbox.status is SandboxStatus.closed
    assert not ws.exists()
    assert sandbox_dirs(state_dir) == []


async def test_context_manager_closes_when_the_body_raises(flavour: str, state_dir: Path) -> None:
    seen: dict[str, Any] = {}

    async def body() -> None:
        async with opened(flavour) as sandbox:
            seen.update(sandbox=sandbox, ws=await workspace_of(sandbox))
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await body()

    assert seen["sandbox"].status is SandboxStatus.closed
    assert not seen["ws"].exists()
    assert sandbox_dirs(state_dir) == []


async def test_close_stops_background_processes(sandbox: Any) -> None:
    background = await sandbox.start_process("sleep 30")
    await run_ok(sandbox, "nohup sleep 30 >/dev/null 2>&1 &")
    await close(sandbox)
    assert not background.is_running
    # the leftover-process guard of conftest checks the nohup'ed one


# -- keep_alive, auto_cleanup, reconnect ------------------------------------------------------------------


async def test_keep_alive_leaves_the_sandbox_for_connect(flavour: str, state_dir: Path) -> None:
    config = SandboxConfig(keep_alive=True, environment_vars={"GREETING": "hello again"})
    async with opened(flavour, config=config) as sandbox:
        ws = await workspace_of(sandbox)
        await sandbox.upload_file("notes/kept.txt", "kept across connections")
        sandbox_id = sandbox.sandbox_id

    assert ws.is_dir()  # leaving `async with` did not remove it
    assert sandbox.status is SandboxStatus.detached  # it runs on: not "closed"
    with pytest.raises(SandboxNotRunningError) as caught:
        await sandbox.execute("true")
    assert "detached" in str(caught.value)
    assert f"connect({sandbox_id!r})" in str(caught.value)
    with pytest.raises(SandboxNotRunningError):
        await sandbox.start()  # not a second sandbox under the same object
    await close(sandbox)  # not this object's any more: closing it ends nothing
    assert sandbox.status is SandboxStatus.detached
    listed = {info.sandbox_id: info for info in await list_sandboxes(flavour)}
    assert listed[sandbox_id].status is SandboxStatus.running
    assert listed[sandbox_id].provider == "local"

    again = await connect(flavour, sandbox_id)
    try:
        assert again.sandbox_id == sandbox_id
        assert again.status is SandboxStatus.running
        assert again.config.keep_alive
        assert await again.download_file("notes/kept.txt") == b"kept across connections"
        assert (await run_ok(again, "cat notes/kept.txt")).stdout == "kept across connections"
        assert (await run_ok(again, 'echo "$GREETING"')).stdout == "hello again\n"  # its config came back
        assert await workspace_of(again) == ws
    finally:
        await close(again)  # an explicit close ends it for good

    assert not ws.exists()
    assert sandbox_id not in {info.sandbox_id for info in await list_sandboxes(flavour)}
    with pytest.raises(SandboxNotFoundError):
        await connect(flavour, sandbox_id)


async def test_connect_by_the_provider_name(flavour: str) -> None:
    async with opened(flavour, "local", SandboxConfig(keep_alive=True)) as sandbox:
        sandbox_id = sandbox.sandbox_id
    again = await connect(flavour, sandbox_id, provider="local")
    assert again.provider_name == "local"
    await close(again)


async def test_auto_cleanup_false_keeps_a_closed_sandbox(flavour: str) -> None:
    async with opened(flavour, config=SandboxConfig(auto_cleanup=False)) as sandbox:
        ws = await workspace_of(sandbox)
        await sandbox.upload_file("result.txt", "keep")
        sandbox_id = sandbox.sandbox_id

    listed = {info.sandbox_id: info for info in await list_sandboxes(flavour)}
    assert listed[sandbox_id].status is SandboxStatus.closed

    again = await connect(flavour, sandbox_id)
    assert (ws / "result.txt").read_text() == "keep"
    assert await again.download_file("result.txt") == b"keep"
    await close(again)
    third = await connect(flavour, sandbox_id)  # still auto_cleanup=False
    try:
        assert await third.download_file("result.txt") == b"keep"
    finally:
        await close(third)


async def test_list_sandboxes(make_sandbox: Any) -> None:
    one, two = await make_sandbox(), await make_sandbox()
    flavour = "async" if getattr(one, "flavour", "") == "async" else "sync"

    listed = await list_sandboxes(flavour)

    assert sorted(info.sandbox_id for info in listed) == sorted([one.sandbox_id, two.sandbox_id])
    assert all(info.status is SandboxStatus.running and info.provider == "local" for info in listed)
    await close(one)
    assert [info.sandbox_id for info in await list_sandboxes(flavour)] == [two.sandbox_id]


@pytest.mark.parametrize(
    "sandbox_id", ["local-" + "0" * 32, "nope", "../../etc", "local-" + "0" * 32 + "\n", ""]
)
async def test_connect_to_an_unknown_sandbox(flavour: str, sandbox_id: str) -> None:
    with pytest.raises(SandboxNotFoundError) as caught:
        await connect(flavour, sandbox_id)
    assert caught.value.provider == "local"
    assert caught.value.operation == "connect"


# -- providers -------------------------------------------------------------------------------------------


async def test_unknown_provider_lists_the_known_ones(flavour: str) -> None:
    with pytest.raises(ProviderNotFoundError) as caught:
        new_sandbox(flavour, "no-such-provider")
    assert "no-such-provider" in str(caught.value)
    assert "local" in caught.value.known
    assert "known providers:" in str(caught.value)
    assert "local" in str(caught.value)


@pytest.mark.parametrize("provider", ["morph", "daytona"])
async def test_planned_provider_is_unavailable(flavour: str, provider: str, state_dir: Path) -> None:
    sandbox = new_sandbox(flavour, provider)
    assert sandbox.provider_name == provider
    with pytest.raises(ProviderUnavailableError) as caught:
        await sandbox.start()
    assert caught.value.provider == provider
    assert f"provider {provider!r} is planned but has no adapter yet" in str(caught.value)
    with pytest.raises(ProviderUnavailableError):
        async with opened(flavour, provider):
            pass
    assert sandbox_dirs(state_dir) == []


async def test_default_provider_comes_from_the_settings(
    flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert new_sandbox(flavour).provider_name == "local"
    monkeypatch.setenv("GRAINCHAIN_DEFAULT_PROVIDER", "e2b")
    assert new_sandbox(flavour).provider_name == "e2b"


# -- the capability gate ---------------------------------------------------------------------------------


def assert_capability_error(error: CapabilityError, feature: str, operation: str) -> None:
    assert error.feature == feature
    assert error.provider == "local"
    assert error.operation == operation
    assert error.retryable is False
    # only providers with an adapter are offered; local declares memory snapshots (refused below where
    # this machine cannot take them)
    supporters = {
        "snapshot.memory": ["docker", "local"],
        "lifecycle.terminate_wake": ["docker", "e2b", "modal"],
        "image.custom": ["docker", "e2b", "modal"],
        "ports": ["docker", "modal"],
    }
    assert error.supported_by == supporters.get(feature, [])
    assert f"provider 'local' does not support {feature!r}" in str(error)


async def test_memory_snapshot_is_refused_and_the_sandbox_stays_usable(make_sandbox: Any) -> None:
    # without namespaces local cannot take memory snapshots: narrowed at creation, refused with the reason
    sandbox = await make_sandbox(SandboxConfig(provider_config={"isolation": "none"}))
    await sandbox.upload_file("f.txt", "x")
    for kind in ("memory", SnapshotKind.memory):
        with pytest.raises(CapabilityError) as caught:
            await sandbox.create_snapshot(kind=kind)
        assert_capability_error(caught.value, "snapshot.memory", "create_snapshot")
        assert "not available here" in str(caught.value)

    assert await sandbox.list_snapshots() == []  # nothing half-made
    assert sandbox.status is SandboxStatus.running
    assert (await run_ok(sandbox, "cat f.txt")).stdout == "x"
    snapshot_id = await sandbox.create_snapshot(kind="filesystem")
    assert [s.snapshot_id for s in await sandbox.list_snapshots()] == [snapshot_id]


async def test_a_terminated_sandbox_refuses_work_until_woken(sandbox: Any) -> None:
    snapshot_id = await sandbox.create_snapshot()
    await sandbox.terminate()
    assert sandbox.status is SandboxStatus.terminated
    with pytest.raises(SandboxNotRunningError):
        await sandbox.execute("echo no")
    await sandbox.wake_up(snapshot_id)
    assert sandbox.status is SandboxStatus.running
    assert (await run_ok(sandbox, "echo alive")).stdout == "alive\n"


@pytest.mark.parametrize(
    ("field", "value", "feature"),
    [("image", "python:3.11", "image.custom")],  # limits: tests/test_local_limits.py
)
async def test_config_the_provider_cannot_honour_fails_at_creation(
    flavour: str, field: str, value: Any, feature: str, state_dir: Path
) -> None:
    config = SandboxConfig(**{field: value})
    sandbox = new_sandbox(flavour, "local", config)

    with pytest.raises(CapabilityError) as caught:
        await sandbox.start()
    assert_capability_error(caught.value, feature, "create")
    assert caught.value.hint is not None
    assert f"SandboxConfig.{field}" in caught.value.hint
    assert f"SandboxConfig.{field}" in str(caught.value)
    assert sandbox.status is SandboxStatus.not_started  # nothing was made: start() may be tried again
    with pytest.raises(CapabilityError):
        async with opened(flavour, config=config):
            pass
    assert sandbox_dirs(state_dir) == []  # nothing was created


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"memory_limit": 1}, "memory_limit must be at least 6291456 bytes (6 MiB) on local, got 1: "),
        ({"memory_limit": "5m"}, "memory_limit must be at least 6291456 bytes (6 MiB) on local, got 5242880"),
        ({"cpu_limit": 1000}, "cpu_limit must be at most {cpus} on local here, got 1000: "),
    ],
)
async def test_limits_the_machine_cannot_honour_are_refused_before_anything_is_made(
    flavour: str, state_dir: Path, fields: dict[str, Any], expected: str
) -> None:
    import os

    from grainchain import ConfigurationError

    cpus = len(os.sched_getaffinity(0))  # (this test machine runs grainchain without a cgroup CPU quota)
    sandbox = new_sandbox(flavour, "local", SandboxConfig(**fields))
    with pytest.raises(ConfigurationError) as caught:
        await sandbox.start()
    assert expected.format(cpus=cpus) in str(caught.value)
    assert (caught.value.provider, caught.value.operation) == ("local", "create")
    assert "OOM killer" in str(caught.value) or f"{cpus} CPUs" in str(caught.value)  # the reason
    assert sandbox.status is SandboxStatus.not_started
    assert sandbox_dirs(state_dir) == []
    async with opened(flavour, "local", SandboxConfig(memory_limit="6m", cpu_limit=cpus)) as fits:
        assert (await run_ok(fits, "echo ok")).stdout == "ok\n"  # at the bounds: allowed


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"memory_limit": "1k"}, r"memory_limit must be at least 6291456 bytes \(6 MiB\) on docker, got 1024: "
         r"the docker engine refuses less"),
        ({"cpu_limit": 1000}, r"cpu_limit must be at most (\d+) on docker here, got 1000: the docker engine's "
         r"machine has \1 CPUs \(NCPU of /info\)"),
    ],
)  # fmt: skip
async def test_docker_refuses_limits_its_engine_cannot_honour(fields: dict[str, Any], expected: str) -> None:
    from test_bad_input import DOCKER_IMAGE, _docker_reason

    from grainchain import ConfigurationError

    if reason := _docker_reason():
        pytest.skip(reason)
    sandbox = new_sandbox("async", "docker", SandboxConfig(image=DOCKER_IMAGE, **fields))
    with pytest.raises(ConfigurationError) as caught:
        await sandbox.start()
    assert re.search(expected, str(caught.value)), caught.value
    assert sandbox.status is SandboxStatus.not_started


async def test_capabilities_of_the_local_provider(sandbox: Any) -> None:
    sandbox = getattr(sandbox, "_target", sandbox)  # supports() is a plain method in both clients
    capabilities = sandbox.capabilities
    assert capabilities[Feature.SNAPSHOT_FILESYSTEM] is SupportLevel.native
    assert capabilities[Feature.LIFECYCLE_TERMINATE_WAKE] is SupportLevel.native
    assert capabilities[Feature.IMAGE_CUSTOM] is SupportLevel.unsupported
    assert sandbox.supports("files")
    assert sandbox.supports(Feature.LIFECYCLE_RECONNECT)
    assert not sandbox.supports("image.custom")
