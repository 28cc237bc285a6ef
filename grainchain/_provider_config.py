"""Typed provider_config: each provider declares a pydantic model (its folder's `config.py`).

`SandboxConfig.provider_config` stays a plain mapping (the API document's examples pass dicts); the facade
parses it into the provider's model when the Sandbox is made, so an unknown key or a wrong type is a
ConfigurationError at `Sandbox(...)` naming the key and the valid ones, long before any provider call.

Credentials are fields typed `SecretStr` whose `json_schema_extra` names their environment variable. They
resolve: an explicit argument > provider_config > the environment > the `[providers.<name>]` table of the
config file; other keys take the config file's table as their defaults. A SecretStr never shows its value
in a repr, a log line or an error message (errors of credential fields never quote the input).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from grainchain.errors import ConfigurationError


class ProviderConfig(BaseModel):
    """Base of every provider's provider_config model: unknown keys are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @classmethod
    def credential_env(cls) -> dict[str, str]:
        """{field: environment variable} of the model's credentials."""
        found = {}
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and isinstance(extra.get("env"), str):
                found[name] = str(extra["env"])
        return found

    def secret(self, name: str) -> str | None:
        """The plain value of credential `name` (for the SDK call that needs it, nowhere else)."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value


class OpenProviderConfig(ProviderConfig):
    """For providers that declare no model (third-party adapters written before typed configs): any key."""

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)
    typed: ClassVar[bool] = False


def parse_provider_config(
    model: type[ProviderConfig],
    provider: str,
    raw: Mapping[str, Any],
    file_defaults: Mapping[str, Any] | None = None,
    arguments: Mapping[str, Any] | None = None,
) -> ProviderConfig:
    """Check `raw` (SandboxConfig.provider_config) against the provider's model; fill credentials from the
    environment and both from the config file's `[providers.<name>]` table (`file_defaults`)."""
    data: dict[str, Any] = dict(file_defaults or {})
    for field, env in model.credential_env().items():
        if os.environ.get(env):
            data[field] = os.environ[env]
    data.update(raw)
    data.update(arguments or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc, model, provider), provider=provider) from None


def _explain(exc: ValidationError, model: type[ProviderConfig], provider: str) -> str:
    secret = set(model.credential_env())
    valid = ", ".join(sorted(model.model_fields)) or "none"
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif str(error["loc"][0] if error["loc"] else "") in secret:
            lines.append(f"{key!r}: {error['msg']}")  # never quote a credential
        else:
            lines.append(
                f"{key!r}: {error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})"
            )
    return f"invalid provider_config for {provider}: {'; '.join(lines)}. Valid keys: {valid}"


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)


def network_allow_list(value: str | list[str], *, host_names: bool) -> str | list[str]:
    """A provider_config `network` value: "internet"/"none" as they are, or an allow-list whose every entry
    is an IP address or CIDR block (or, where the provider takes them, a host name). For the providers'
    field validators; a ValueError names the entry and what was wrong."""
    if isinstance(value, str):
        return value
    if not value:
        raise ValueError('an empty allow-list allows nothing: write "none" for that')
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not host_names:
                raise ValueError(
                    f"{entry!r} is neither an IP address nor a CIDR block (10.0.0.0/8); this provider's "
                    "allow-list takes no host names"
                ) from None
            if not _HOST_NAME.fullmatch(entry.lower()):
                raise ValueError(
                    f"{entry!r} is neither an IP address, a CIDR block (10.0.0.0/8) nor a host name"
                ) from None
    return value
