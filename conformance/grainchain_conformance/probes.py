"""One call per feature that needs nothing else: how the suite asks a provider for a feature it declares
unsupported (and expects CapabilityError). Every feature the spec gates has a probe here; the informational
ones (gated by nothing: set through provider_config) are listed with the spec's reason instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grainchain.adapters import INFORMATIONAL_FEATURES, Feature, load_spec
from grainchain.models import SnapshotKind
from grainchain_conformance.promises import is_unconditional

# Features a running sandbox can be asked for.
SANDBOX_PROBES: dict[Feature, Callable[[Any], Any]] = {  # on a sandbox of either client
    Feature.EXEC: lambda s: s.execute("true"),
    Feature.EXEC_STREAMING: lambda s: s.execute("true", on_stdout=lambda _: None),
    Feature.EXEC_STDIN: lambda s: s.execute("true", stdin=b"x"),
    Feature.PROCESS_BACKGROUND: lambda s: s.start_process("true"),
    Feature.FILES: lambda s: s.upload_file("grainchain-probe", b"x"),
    Feature.FILES_DIRECTORIES: lambda s: s.download_directory(".", "grainchain-probe-never-made"),
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

# Informational in the spec: no operation or SandboxConfig field gates them, so no provider-neutral call asks
# for them; reported with the spec's reason, not tested.
INFORMATIONAL: dict[Feature, str] = dict(INFORMATIONAL_FEATURES)

# Operations that need any one of several features (the spec's `any_of`), each called so that, past the
# gate, the provider answers (list) or says the id is unknown (SnapshotNotFoundError).
NO_SUCH_SNAPSHOT = "grainchain-conformance-no-such-snapshot"
ANY_OF_PROBES: dict[str, Callable[[Any], Any]] = {
    "restore_snapshot": lambda s: s.restore_snapshot(NO_SUCH_SNAPSHOT),
    "list_snapshots": lambda s: s.list_snapshots(),
    "delete_snapshot": lambda s: s.delete_snapshot(NO_SUCH_SNAPSHOT),
}


def any_of_requirements() -> dict[str, tuple[Feature, ...]]:
    """Operation -> the features of its unconditional `any_of` requirement, in the spec's order."""
    return {
        name: tuple(Feature(f) for f in req["any_of"])
        for name, op in load_spec()["operations"].items()
        for req in op["requires"]
        if "any_of" in req and is_unconditional(req)
    }
