"""provider_config of the e2b provider (checked at `Sandbox(...)`; see grainchain/_provider_config.py).

The API document's keys (`template`, `api_key`) are accepted as written. A sandbox's `lifetime` is how long
E2B keeps it after its creation (or the last extension) before killing it by itself: a forgotten sandbox
ends. It is not SandboxConfig.timeout, which is each command's default timeout.

`network` is the sandbox's outbound access: "internet" (E2B's default), "none", or an allow-list of IP
addresses, CIDR blocks and host names (everything else denied, E2B's allow_out / deny_out)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from grainchain._provider_config import ProviderConfig, network_allow_list

DEFAULT_LIFETIME = 900  # seconds: a forgotten sandbox costs at most 15 minutes
DEFAULT_KEEP_ALIVE_LIFETIME = 3600  # seconds a sandbox left running by keep_alive lives on


class E2bConfig(ProviderConfig):
    template: str | None = Field(
        None, description="the sandbox template (SandboxConfig.image names one too; E2B_TEMPLATE)"
    )
    api_key: SecretStr | None = Field(
        None, description="E2B API key", json_schema_extra={"env": "E2B_API_KEY"}
    )
    lifetime: Annotated[int, Field(gt=0, le=86_400, strict=True)] = Field(
        DEFAULT_LIFETIME, description="seconds E2B keeps the sandbox before it ends it by itself"
    )
    keep_alive_lifetime: Annotated[int, Field(gt=0, le=86_400, strict=True)] = Field(
        DEFAULT_KEEP_ALIVE_LIFETIME,
        description="the lifetime given when the client lets go of a keep_alive sandbox",
    )
    domain: str | None = Field(None, description="E2B domain of a self-hosted deployment (E2B_DOMAIN)")
    api_url: str | None = Field(None, description="control plane URL of a test endpoint (E2B_API_URL)")
    sandbox_url: str | None = Field(
        None, description="in-sandbox agent URL of a test endpoint (E2B_SANDBOX_URL)"
    )
    network: Literal["internet", "none"] | list[str] = Field(
        "internet",
        description='outbound access: "internet", "none", or an allow-list of IPs, CIDR blocks and host names',
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="labels added to the E2B sandbox's metadata (E2B's dashboard and API show them)",
    )
    request_timeout: Annotated[float, Field(gt=0)] = Field(
        60.0, description="seconds one API request may take"
    )
    retries: Annotated[int, Field(ge=0, le=10, strict=True)] = Field(
        3, description="retries of a rate-limited or unavailable control-plane call (the SDK's backoff)"
    )

    @field_validator("network")
    @classmethod
    def _allow_list(cls, value: str | list[str]) -> str | list[str]:
        return network_allow_list(value, host_names=True)

    @field_validator("metadata")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("grainchain_"):
                raise ValueError(f"{key!r}: keys starting with 'grainchain_' are grainchain's own")
        return value
