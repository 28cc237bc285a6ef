"""The public data models: generated from the spec, with the few behaviours the spec cannot express."""

from __future__ import annotations

from pydantic import computed_field

from grainchain._generated import models as _generated
from grainchain._generated.models import (
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
    SupportLevel,
)


class ExecutionResult(_generated.ExecutionResult):
    __doc__ = _generated.ExecutionResult.__doc__

    @computed_field  # type: ignore[prop-decorator]
    @property
    def success(self) -> bool:
        """True when the command exited with code 0."""
        return self.return_code == 0


__all__ = [
    "ExecutionResult",
    "FileInfo",
    "SandboxConfig",
    "SandboxInfo",
    "SandboxStatus",
    "SnapshotInfo",
    "SnapshotKind",
    "SupportLevel",
]
