"""A sandbox's life: its attributes, close (every process ends, later calls refused), auto_cleanup,
keep_alive, reconnecting and listing; each step checked from inside (a counter that shows whether
anything of the sandbox still runs) and by the provider's own listing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from grainchain.adapters import Feature
from grainchain.errors import SandboxNotFoundError, SandboxNotRunningError
from grainchain.models import SandboxStatus
from grainchain_conformance import inside
from grainchain_conformance.clients import sandbox_class
from grainchain_conformance.target import ConformanceTarget


def _listed(conformance: ConformanceTarget, sandbox_id: str) -> list[SandboxStatus]:
    return [info.status for info in conformance.list_sandboxes() if info.sandbox_id == sandbox_id]


@pytest.mark.feature("exec")
@pytest.mark.promises("lifecycle:attributes", "lifecycle:create", "lifecycle:close")
def test_attributes_and_a_closed_sandbox(conformance: ConformanceTarget) -> None:
    made = sandbox_class(conformance.client)(conformance.name, conformance.sandbox_config())
    assert made.status is SandboxStatus.not_started, "a sandbox object before start() is not being created"
    sandbox = conformance.open()
    try:
        assert isinstance(sandbox.sandbox_id, str)
        assert sandbox.sandbox_id
        assert sandbox.provider_name == conformance.name
        assert sandbox.status is SandboxStatus.running
        assert dict(sandbox.capabilities) == conformance.capabilities
        with conformance.sandbox() as other:
            assert other.sandbox_id != sandbox.sandbox_id, "two sandboxes share an id"
    finally:
        sandbox.close()
    closed: SandboxStatus = sandbox.status  # (a new name: type checkers keep the narrowing above)
    assert closed is SandboxStatus.closed
    with pytest.raises(SandboxNotRunningError):
        sandbox.execute("true")
    sandbox.close()  # twice is fine


@pytest.mark.feature("lifecycle.reconnect", "exec")
@pytest.mark.promises(
    "lifecycle:connect",
    "lifecycle:list_sandboxes",
    "feature:lifecycle.reconnect",
    "field:SandboxInfo.sandbox_id",
    "field:SandboxInfo.provider",
    "field:SandboxInfo.status",
    "field:SandboxInfo.created_at",
)
def test_connect_reaches_the_same_running_sandbox(conformance: ConformanceTarget) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    with conformance.sandbox() as sandbox:
        after = datetime.now(UTC) + timedelta(seconds=5)
        inside.start_counter(sandbox)
        sandbox.execute("echo mine > marker")
        infos = [i for i in conformance.list_sandboxes() if i.sandbox_id == sandbox.sandbox_id]
        assert len(infos) == 1, f"list_sandboxes shows a running sandbox {len(infos)} times"
        assert (infos[0].provider, infos[0].status) == (conformance.name, SandboxStatus.running)
        assert before <= infos[0].created_at <= after, f"created_at {infos[0].created_at} is not now"
        again = conformance.connect(sandbox.sandbox_id)
        try:
            assert again.sandbox_id == sandbox.sandbox_id
            assert again.execute("cat marker").stdout == "mine\n"
            at = inside.counter_value(again)
            inside.counter_reaches(again, at + 5)  # its processes run on
        finally:
            again.detach()
        with pytest.raises(SandboxNotFoundError):
            conformance.connect("gc-conformance-no-such-sandbox")
        sandbox_id = sandbox.sandbox_id
    assert _listed(conformance, sandbox_id) == [], "a closed, cleaned-up sandbox is still listed"
    with pytest.raises(SandboxNotFoundError):
        conformance.connect(sandbox_id)


@pytest.mark.feature("lifecycle.reconnect", "exec")
@pytest.mark.promises("config:auto_cleanup", "lifecycle:close", "convention:processes")
def test_close_ends_every_process_and_auto_cleanup_false_keeps_the_files(
    conformance: ConformanceTarget,
) -> None:
    sandbox = conformance.open(auto_cleanup=False)
    sandbox_id = sandbox.sandbox_id
    try:
        inside.start_counter(sandbox)  # `cmd &` from execute
        inside.start_counter(sandbox, "session-counter", session=True)  # `setsid cmd &`
        if conformance.supports(Feature.PROCESS_BACKGROUND):
            sandbox.start_process(inside.COUNTER.format(name="bg-counter").rstrip("&") + "; wait")
            inside.counter_reaches(sandbox, 2, name="bg-counter")
        sandbox.execute("echo kept > kept-file")
    finally:
        sandbox.close()
    assert _listed(conformance, sandbox_id) in ([SandboxStatus.closed], [SandboxStatus.terminated]), (
        "a sandbox kept by auto_cleanup=False must be listed, and not as running"
    )
    kept = conformance.connect(sandbox_id, auto_cleanup=True)  # this connection deletes it on close
    try:
        assert kept.execute("cat kept-file").stdout == "kept\n", "auto_cleanup=False lost the files"
        for name in ("counter", "session-counter", "bg-counter"):
            before, after = inside.counter_is_still(kept, name)
            assert before == after, f"{name} went from {before} to {after}: a process survived close()"
    finally:
        kept.close()
    assert _listed(conformance, sandbox_id) == [], "connect(config auto_cleanup=True) then close kept it"


@pytest.mark.feature("lifecycle.reconnect", "exec")
@pytest.mark.promises("config:keep_alive", "config:auto_cleanup", "lifecycle:detach")
def test_keep_alive_leaves_the_sandbox_running(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(keep_alive=True) as sandbox:
        inside.start_counter(sandbox)
        sandbox_id = sandbox.sandbox_id
    try:
        detached: SandboxStatus = sandbox.status
        assert detached is SandboxStatus.detached, f"a kept-alive sandbox it let go of says {detached}"
        with pytest.raises(SandboxNotRunningError):
            sandbox.execute("true")
        sandbox.close()  # the object's, not the sandbox's: it runs on
        assert sandbox.status is SandboxStatus.detached
        assert _listed(conformance, sandbox_id) == [SandboxStatus.running]
        again = conformance.connect(sandbox_id)
        at = inside.counter_value(again)
        inside.counter_reaches(again, at + 5)
        again.detach()
    finally:
        with contextlib.suppress(SandboxNotFoundError):
            conformance.connect(sandbox_id).close()
    assert _listed(conformance, sandbox_id) == [], "closing with auto_cleanup=True must remove it"
    with pytest.raises(SandboxNotFoundError):
        conformance.connect(sandbox_id)


@pytest.mark.feature("image.custom")
@pytest.mark.promises("config:image", "feature:image.custom")
def test_an_image_that_does_not_exist_fails_creation(conformance: ConformanceTarget) -> None:
    """A provider that ignores SandboxConfig.image would start its default image instead."""
    from grainchain.errors import GrainchainError

    with pytest.raises(GrainchainError), conformance.sandbox(image="gc-conformance-no-such-image-7f3a:none"):
        pass
    if conformance.config.image:  # the suite's own image starts
        with conformance.sandbox(image=conformance.config.image) as sandbox:
            assert sandbox.status is SandboxStatus.running
