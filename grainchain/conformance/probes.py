"""One call per feature that needs nothing else: how the suite asks a provider for a feature it declares
unsupported (and expects CapabilityError)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grainchain._generated.features import Feature
from grainchain.conformance.promises import NOT_TESTABLE
from grainchain.models import SnapshotKind

# Features a running sandbox can be asked for.
SANDBOX_PROBES: dict[Feature, Callable[[Any], Any]] = {  # on a sandbox of either client
    Feature.EXEC: lambda s: s.execute("true"),
    Feature.EXEC_STREAMING: lambda s: s.execute("true", on_stdout=lambda _: None),
    Feature.PROCESS_BACKGROUND: lambda s: s.start_process("true"),
    Feature.FILES: lambda s: s.upload_file("grainchain-probe", b"x"),
    Feature.SNAPSHOT_FILESYSTEM: lambda s: s.create_snapshot(),
    Feature.SNAPSHOT_MEMORY: lambda s: s.create_snapshot(kind=SnapshotKind.memory),
    Feature.LIFECYCLE_TERMINATE_WAKE: lambda s: s.terminate(),
    Feature.LIFECYCLE_RECONNECT: lambda s: s.list_sandboxes(s.provider_name),
    Feature.PORTS: lambda s: s.port_address(8080),
}

# Supported features that the behaviour tests (state machine, examples) exercise.
BEHAVIOUR_CHECKED = frozenset({*SANDBOX_PROBES, Feature.LIMITS_MEMORY, Feature.LIMITS_CPU})

# Features asked for by setting a SandboxConfig field: creation must fail.
CONFIG_PROBES: dict[Feature, dict[str, Any]] = {
    Feature.LIMITS_MEMORY: {"memory_limit": "256MB"},
    Feature.LIMITS_CPU: {"cpu_limit": 0.5},
    Feature.IMAGE_CUSTOM: {"image": "grainchain-conformance-probe"},
    Feature.PORTS: {"ports": [8080]},
}

# Declared in the spec, but no operation of the spec exercises them yet: reported, not tested (the reasons are
# the ones the promise list gives, promises.NOT_TESTABLE).
NOT_YET_TESTABLE: dict[Feature, str] = {
    Feature(promise.removeprefix("feature:")): reason
    for promise, reason in NOT_TESTABLE.items()
    if promise.startswith("feature:")
}
