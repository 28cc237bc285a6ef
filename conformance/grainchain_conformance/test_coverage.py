"""The suite covers the spec: every promise it writes down has a test that claims it (promises.py)."""

from __future__ import annotations

from grainchain.adapters import (
    CONFIG_REQUIREMENTS,
    INFORMATIONAL_FEATURES,
    OPERATION_FEATURES,
    Feature,
)
from grainchain_conformance.probes import (
    ANY_OF_PROBES,
    CONFIG_PROBES,
    INFORMATIONAL,
    SANDBOX_PROBES,
    any_of_requirements,
)
from grainchain_conformance.promises import NOT_TESTABLE, spec_promises, uncovered, unknown_claims


def test_every_promise_of_the_spec_has_a_test() -> None:
    missing = uncovered()
    assert not missing, "promises of the spec no conformance test checks:\n" + "\n".join(
        f"  {p}: {spec_promises()[p].text}" for p in missing
    )


def test_every_claim_names_a_promise_of_the_spec() -> None:
    unknown = unknown_claims()
    assert not unknown, f"claims of promises the spec does not make: {unknown}"
    stale = sorted(set(NOT_TESTABLE) - set(spec_promises()))
    assert not stale, f"NOT_TESTABLE names promises the spec does not make: {stale}"


def test_every_feature_is_gated_or_informational() -> None:
    """No feature is silently ungated: an operation or a SandboxConfig field needs it (CapabilityError where
    it is unsupported), or the spec declares it informational with the reason."""
    gated = {f for features in OPERATION_FEATURES.values() for f in features} | set(
        CONFIG_REQUIREMENTS.values()
    )
    informational = set(INFORMATIONAL_FEATURES)
    assert not gated & informational, f"informational yet gated: {sorted(gated & informational)}"
    ungated = sorted(f.value for f in set(Feature) - gated - informational)
    assert not ungated, f"features nothing gates and the spec does not call informational: {ungated}"
    for feature, reason in INFORMATIONAL_FEATURES.items():
        assert reason.strip(), f"{feature.value}: informational without a reason"
        assert NOT_TESTABLE[f"feature:{feature.value}"].endswith(reason), feature


def test_the_suite_probes_every_gated_feature() -> None:
    probed = set(SANDBOX_PROBES) | set(CONFIG_PROBES)
    assert not probed & set(INFORMATIONAL), "an informational feature has a probe: is it gated after all?"
    unprobed = sorted(f.value for f in set(Feature) - probed - set(INFORMATIONAL))
    assert not unprobed, f"gated features test_unsupported.py never asks for: {unprobed}"
    assert set(ANY_OF_PROBES) == set(any_of_requirements()), (
        "an any_of operation without a probe (or a stale one)"
    )
