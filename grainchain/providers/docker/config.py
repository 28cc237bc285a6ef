"""provider_config of the docker provider (checked at `Sandbox(...)`; see grainchain/_provider_config.py).

The API document's example is accepted as written: `volumes` as a {host path: container path} mapping and
`ports` as a {container port: host port} mapping, next to the list forms."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from grainchain._provider_config import ProviderConfig
from grainchain.providers.docker import _engine as dk


class DockerConfig(ProviderConfig):
    image: str | None = Field(None, description="image when SandboxConfig.image is unset")
    dockerfile: str | None = Field(None, description="a Dockerfile to build the sandbox's image from")
    build_context: str | None = Field(
        None, description="the build context directory (default: the Dockerfile's)"
    )
    network: str | None = Field(None, description="the engine network mode, e.g. 'bridge', 'none', 'host'")
    pids_limit: Annotated[int, Field(gt=0, strict=True)] = Field(
        dk.DEFAULT_PIDS_LIMIT, description="most processes at once"
    )
    disk_limit: Any = Field(None, description="a size ('10GiB'); needs overlay2 on XFS with pquota")
    volumes: list[str] | None = Field(
        None, description='"/path", "name:/path[:ro]", "/host/dir:/path[:ro]", or {host dir: path}'
    )
    ports: dict[int, int | None] | None = Field(
        None, description="{container port: host port (None: the engine picks)}; SandboxConfig.ports too"
    )
    ttl: Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)] | None = Field(
        None, description="seconds after which the container ends by itself"
    )

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: Any) -> Any:
        if isinstance(value, dict):  # the API document's {"/host/path": "/container/path"}
            return [f"{source}:{target}" for source, target in value.items()]
        return value

    @field_validator("disk_limit", mode="after")
    @classmethod
    def _disk_limit(cls, value: Any) -> Any:
        dk.parse_disk_limit(value)  # a ConfigurationError naming the accepted forms
        return value
