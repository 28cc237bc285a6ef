"""provider_config of the morph provider: the API document's keys (`image_id`, `vcpus`, `memory`, `disk_size`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr

from grainchain._provider_config import ProviderConfig

Positive = Annotated[int, Field(gt=0, strict=True)]


class MorphConfig(ProviderConfig):
    image_id: str | None = Field(None, description='the base image, e.g. "morphvm-minimal"')
    vcpus: Positive | None = Field(None, description="virtual CPUs")
    memory: Positive | None = Field(None, description="memory in MB")
    disk_size: Positive | None = Field(None, description="disk in MB")
    api_key: SecretStr | None = Field(
        None, description="Morph API key", json_schema_extra={"env": "MORPH_API_KEY"}
    )
