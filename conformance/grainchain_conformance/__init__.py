"""The conformance suite: proves that a provider adapter does what its declaration claims.

    pip install 'grainchain[conformance]'
    pytest --pyargs grainchain_conformance --grainchain-provider NAME      # or: grainchain conformance NAME

For every feature the provider declares supported it checks behaviour (a Hypothesis state machine over the
blocking client, against a model of the sandbox, plus example-based checks for timeouts, large data and
concurrency); for every feature declared unsupported it checks that the call raises CapabilityError naming
that feature and provider, and that the sandbox stays usable. See docs/writing-a-provider.md.

The same tests, inherited in a provider's own test file (grainchain_conformance.suite):

    from grainchain_conformance import ConformanceSuite

    class TestAcme(ConformanceSuite):
        provider = "acme"
"""

from __future__ import annotations

from typing import Any

# The suite classes import every test module (and Hypothesis): only when asked for, never when pytest loads
# the plugin (which imports this package) in a run that does not use them.
_SUITE_CLASSES = (
    "ConformanceSuite",
    "ProviderSuite",
    "DeclarationSuite",
    "ExecSuite",
    "FilesSuite",
    "DirectoriesSuite",
    "PathsSuite",
    "ProcessesSuite",
    "StdinSuite",
    "LifecycleSuite",
    "SnapshotsSuite",
    "ExamplesSuite",
    "StateMachineSuite",
    "UnsupportedSuite",
)
__all__ = list(_SUITE_CLASSES)


def __getattr__(name: str) -> Any:
    if name in _SUITE_CLASSES:
        from grainchain_conformance import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
