"""provider_config of the memory provider (checked at `Sandbox(...)`, like every provider's)."""

from __future__ import annotations

from pydantic import Field, field_validator

from grainchain.adapters import Feature, ProviderConfig


class MemoryConfig(ProviderConfig):
    missing: dict[str, str] = Field(
        default_factory=dict,
        description="declared features this backend turns out to lack, each with the reason: what the "
        "adapter's missing_features() reports (runtime narrowing, as a real backend's probe would find it)",
    )

    @field_validator("missing")
    @classmethod
    def _features(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            Feature(name)  # an unknown feature name fails here, as a ValueError
        return value
