"""provider_config of the local provider (checked at `Sandbox(...)`; see grainchain/_provider_config.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from grainchain._provider_config import ProviderConfig
from grainchain._types import parse_byte_size


class LocalConfig(ProviderConfig):
    isolation: Literal["namespaces", "none"] | None = Field(
        None,
        description='"namespaces" (bubblewrap; the default where it works) or "none" (plain host processes '
        "in a private workspace: not an isolation boundary)",
    )
    network: Literal["host", "none"] = Field(
        "host", description='"host" or "none" (a network namespace with only loopback; needs namespaces)'
    )
    pids_limit: Annotated[int, Field(gt=0, strict=True)] | None = Field(
        None, description="most processes at once; unset: 4096 where cgroups are writable, None: no limit"
    )
    snapshots: Literal["layers", "copy"] | None = Field(
        None, description='"layers" (overlayfs, the default where it mounts) or "copy"'
    )
    disk_limit: int | None = Field(
        None,
        description="size of the sandbox's own disk (an int of bytes or '10GiB'); unset: 10 GiB where a "
        "disk can be made (root, loop devices), None: no quota",
    )

    @field_validator("disk_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_byte_size(value)

    def is_set(self, key: str) -> bool:
        """Whether the caller gave `key` (for keys whose unset default differs from None)."""
        return key in self.model_fields_set
