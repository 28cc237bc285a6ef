"""Every feature declared unsupported raises CapabilityError naming it, and the sandbox stays usable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from grainchain.adapters import Feature
from grainchain.errors import CapabilityError, SnapshotNotFoundError
from grainchain_conformance.probes import (
    ANY_OF_PROBES,
    BEHAVIOUR_CHECKED,
    CONFIG_PROBES,
    INFORMATIONAL,
    SANDBOX_PROBES,
    any_of_requirements,
)
from grainchain_conformance.target import ConformanceTarget


def _unsupported_or_skip(conformance: ConformanceTarget, feature: Feature) -> None:
    if conformance.supports(feature):
        checked = (
            "behaviour tests check it"
            if feature in BEHAVIOUR_CHECKED
            else "the suite has no provider-neutral behaviour check for it yet"
        )
        pytest.skip(f"not applicable: {conformance.name!r} supports {feature.value} ({checked})")


def _params(features: Iterable[Feature]) -> list[Any]:
    return [pytest.param(f, id=f.value, marks=pytest.mark.covers(f.value)) for f in features]


@pytest.mark.parametrize("feature", _params(SANDBOX_PROBES))
def test_unsupported_operation_raises_capability_error(
    conformance: ConformanceTarget, feature: Feature
) -> None:
    _unsupported_or_skip(conformance, feature)
    with conformance.sandbox() as sandbox:
        with pytest.raises(CapabilityError) as info:
            SANDBOX_PROBES[feature](sandbox)
        assert (info.value.feature, info.value.provider) == (feature.value, conformance.name)
        assert info.value.operation, "the error must name the operation"
        if conformance.supports(Feature.EXEC):  # still usable
            assert sandbox.execute("echo still-here").stdout == "still-here\n"


@pytest.mark.parametrize("feature", _params(CONFIG_PROBES))
def test_unsupported_config_field_fails_creation(conformance: ConformanceTarget, feature: Feature) -> None:
    _unsupported_or_skip(conformance, feature)
    with pytest.raises(CapabilityError) as info, conformance.sandbox(**CONFIG_PROBES[feature]):
        pass
    assert (info.value.feature, info.value.provider) == (feature.value, conformance.name)


@pytest.mark.parametrize("feature", _params(INFORMATIONAL))
def test_feature_without_operation_is_reported(conformance: ConformanceTarget, feature: Feature) -> None:
    pytest.skip(
        f"informational in the spec (no operation or SandboxConfig field gates it): {INFORMATIONAL[feature]}"
    )


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(op, id=op, marks=pytest.mark.covers(*(f.value for f in features)))
        for op, features in any_of_requirements().items()
    ],
)
def test_operation_needing_any_of_several_features(conformance: ConformanceTarget, operation: str) -> None:
    """Gated only when the provider supports none of the alternatives (e.g. list_snapshots with memory
    snapshots alone works); then CapabilityError names the first."""
    alternatives = any_of_requirements()[operation]
    with conformance.sandbox() as sandbox:
        if any(conformance.supports(f) for f in alternatives):
            try:
                ANY_OF_PROBES[operation](sandbox)
            except CapabilityError as exc:
                pytest.fail(
                    f"{operation} is gated although {conformance.name!r} supports one of its features: {exc}"
                )
            except SnapshotNotFoundError:
                pass  # the provider was asked, and the id is unknown to it
            return
        with pytest.raises(CapabilityError) as info:
            ANY_OF_PROBES[operation](sandbox)
        assert (info.value.feature, info.value.provider) == (alternatives[0].value, conformance.name)
        assert info.value.operation == operation


@pytest.mark.covers(Feature.LIFECYCLE_RECONNECT.value)
def test_unsupported_reconnect_needs_no_sandbox(conformance: ConformanceTarget) -> None:
    _unsupported_or_skip(conformance, Feature.LIFECYCLE_RECONNECT)
    with pytest.raises(CapabilityError) as info:
        conformance.connect("no-such-sandbox")
    assert info.value.feature == Feature.LIFECYCLE_RECONNECT.value
