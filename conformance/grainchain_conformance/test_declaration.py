"""The declaration itself: complete, loadable, and never wider than the spec allows."""

from __future__ import annotations

from grainchain.adapters import Feature
from grainchain.models import SupportLevel
from grainchain_conformance.target import ConformanceTarget


def test_declares_a_level_for_every_feature(conformance: ConformanceTarget) -> None:
    missing = sorted(f.value for f in Feature if f not in conformance.provider.features)
    assert not missing, f"{conformance.name} declares no level for: {', '.join(missing)}"


def test_adapters_load_for_both_clients(conformance: ConformanceTarget) -> None:
    for flavour in ("async", "sync"):
        adapter = conformance.provider.load_adapter(flavour)
        assert adapter.provider_name == conformance.name, f"the {flavour} adapter names another provider"


def test_runtime_narrowing_never_widens(conformance: ConformanceTarget) -> None:
    order = [SupportLevel.unsupported, SupportLevel.emulated, SupportLevel.native]
    for feature, level in conformance.capabilities.items():
        declared = conformance.provider.level(feature)
        assert order.index(level) <= order.index(declared), (
            f"{feature.value}: {level} is wider than {declared}"
        )
