"""provider_config of the e2b provider: the API document's keys (`template`, `api_key`)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from grainchain._provider_config import ProviderConfig


class E2bConfig(ProviderConfig):
    template: str | None = Field(None, description="the sandbox template (SandboxConfig.image names one too)")
    api_key: SecretStr | None = Field(
        None, description="E2B API key", json_schema_extra={"env": "E2B_API_KEY"}
    )
