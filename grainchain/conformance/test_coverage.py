"""The suite covers the spec: every promise it writes down has a test that claims it (promises.py)."""

from __future__ import annotations

from grainchain.conformance.promises import NOT_TESTABLE, spec_promises, uncovered, unknown_claims


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
