"""provider_config of the daytona provider."""

from __future__ import annotations

from pydantic import Field, SecretStr

from grainchain._provider_config import ProviderConfig


class DaytonaConfig(ProviderConfig):
    api_key: SecretStr | None = Field(
        None, description="Daytona API key", json_schema_extra={"env": "DAYTONA_API_KEY"}
    )
    api_url: str | None = Field(None, description="the API's address (…/api)")
    target: str | None = Field(None, description="the region the sandboxes run in")
