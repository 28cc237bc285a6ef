"""Every feature declared unsupported raises CapabilityError naming it, and the sandbox stays usable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from grainchain._generated.features import Feature
from grainchain.conformance.probes import (
    BEHAVIOUR_CHECKED,
    CONFIG_PROBES,
    NOT_YET_TESTABLE,
    SANDBOX_PROBES,
)
from grainchain.conformance.target import ConformanceTarget
from grainchain.errors import CapabilityError


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


@pytest.mark.parametrize("feature", _params(NOT_YET_TESTABLE))
def test_feature_without_operation_is_reported(conformance: ConformanceTarget, feature: Feature) -> None:
    pytest.skip(f"not testable yet: {NOT_YET_TESTABLE[feature]}")


@pytest.mark.covers(Feature.LIFECYCLE_RECONNECT.value)
def test_unsupported_reconnect_needs_no_sandbox(conformance: ConformanceTarget) -> None:
    _unsupported_or_skip(conformance, Feature.LIFECYCLE_RECONNECT)
    with pytest.raises(CapabilityError) as info:
        conformance.connect("no-such-sandbox")
    assert info.value.feature == Feature.LIFECYCLE_RECONNECT.value
