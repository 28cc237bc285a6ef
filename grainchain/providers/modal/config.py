"""provider_config of the modal provider: the API document's keys (`image`, `token_id`, `token_secret`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator

from grainchain._provider_config import ProviderConfig


class ModalConfig(ProviderConfig):
    # a modal.Image (`modal.Image.from_registry(...).pip_install([...])`) or a registry name; typed Any so
    # that checking a config never imports modal
    image: Any = Field(None, description="a modal.Image, or a registry image name")
    token_id: SecretStr | None = Field(
        None, description="Modal token id", json_schema_extra={"env": "MODAL_TOKEN_ID"}
    )
    token_secret: SecretStr | None = Field(
        None, description="Modal token secret", json_schema_extra={"env": "MODAL_TOKEN_SECRET"}
    )
    app_name: str = Field("grainchain", description="the Modal app the sandboxes belong to")

    @field_validator("image")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or type(value).__module__.startswith("modal"):
            return value
        raise ValueError(f"must be a modal.Image or a registry image name, not a {type(value).__name__}")
