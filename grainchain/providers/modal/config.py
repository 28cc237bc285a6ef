"""provider_config of the modal provider (checked at `Sandbox(...)`; see grainchain/_provider_config.py).

The API document's keys (`image`, `token_id`, `token_secret`) are accepted as written. A sandbox's
`lifetime` is Modal's sandbox timeout: Modal ends it that long after its creation, so a forgotten sandbox
ends; `idle_timeout` ends it earlier when nothing runs in it. Neither is SandboxConfig.timeout, which is
each command's default timeout.

`network` is the sandbox's outbound access: "internet" (Modal's default), "none" (block_network), or an
allow-list of IP addresses and CIDR blocks (Modal's outbound_cidr_allowlist: everything else is blocked)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator

from grainchain._provider_config import ProviderConfig, network_allow_list

DEFAULT_LIFETIME = 900  # seconds: a forgotten sandbox costs at most 15 minutes
MAX_LIFETIME = 86_400  # Modal's longest sandbox timeout (24 h)


class ModalConfig(ProviderConfig):
    # a modal.Image (`modal.Image.from_registry(...).pip_install([...])`) or a registry name; typed Any so
    # that checking a config never imports modal
    image: Any = Field(None, description="a modal.Image, or a registry image name")
    dockerfile: str | None = Field(
        None, description="path of a Dockerfile to build the image from (modal.Image.from_dockerfile)"
    )
    build_context: str | None = Field(
        None, description="directory the Dockerfile's COPY/ADD read from (default: the Dockerfile's)"
    )
    token_id: SecretStr | None = Field(
        None, description="Modal token id", json_schema_extra={"env": "MODAL_TOKEN_ID"}
    )
    token_secret: SecretStr | None = Field(
        None, description="Modal token secret", json_schema_extra={"env": "MODAL_TOKEN_SECRET"}
    )
    app_name: str = Field("grainchain", description="the Modal app the sandboxes belong to")
    environment: str | None = Field(None, description="the Modal environment (default: the profile's)")
    lifetime: Annotated[int, Field(gt=0, le=MAX_LIFETIME, strict=True)] = Field(
        DEFAULT_LIFETIME, description="seconds Modal keeps the sandbox before it ends it by itself"
    )
    idle_timeout: Annotated[int, Field(gt=0, le=MAX_LIFETIME, strict=True)] | None = Field(
        None, description="seconds without a running command after which Modal ends the sandbox"
    )
    network: Literal["internet", "none"] | list[str] = Field(
        "internet", description='outbound access: "internet", "none", or an allow-list of IPs and CIDR blocks'
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="tags added to the Modal sandbox (Modal's dashboard and API show them)",
    )
    retries: Annotated[int, Field(ge=0, le=10, strict=True)] = Field(
        3, description="retries of an idempotent call whose connection or answer was lost"
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or type(value).__module__.startswith("modal"):
            return value
        raise ValueError(f"must be a modal.Image or a registry image name, not a {type(value).__name__}")

    @field_validator("network")
    @classmethod
    def _allow_list(cls, value: str | list[str]) -> str | list[str]:
        checked = network_allow_list(value, host_names=False)
        if isinstance(checked, str):
            return checked
        return [str(ipaddress.ip_network(entry, strict=False)) for entry in checked]  # (Modal takes CIDRs)

    @field_validator("tags")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("grainchain_"):
                raise ValueError(f"{key!r}: tags starting with 'grainchain_' are grainchain's own")
        return value
