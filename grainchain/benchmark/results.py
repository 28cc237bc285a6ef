"""The results file (results.json): what a run measured, on which machine, with which settings.

`compare` loads runs written by older versions too, so every field added later gets a default, unknown
fields are ignored, and a summary missing from a file is computed from its samples.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grainchain.benchmark.stats import Summary

SCHEMA_VERSION = 1
MAX_STORED_SAMPLES = 500  # per series; summaries are computed before thinning


class Status(StrEnum):
    ok = "ok"
    unsupported = "unsupported"  # the sandbox's capabilities say so: not a failure
    error = "error"  # no attempt succeeded


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Series(_Model):
    """Timings of one side (grainchain, or the raw baseline) of one operation, warm-ups excluded."""

    samples: list[float] = Field(default_factory=list, description="seconds; thinned if very many")
    summary: Summary | None = None
    errors: int = Field(0, description="failed attempts, warm-ups included")
    error: str | None = Field(None, description="the first failure")

    @model_validator(mode="after")
    def _summarise(self) -> Series:
        if self.summary is None and self.samples:
            self.summary = Summary.of(self.samples)
        return self

    @classmethod
    def of(cls, samples: list[float], errors: int = 0, error: str | None = None) -> Series:
        summary = Summary.of(samples) if samples else None
        return cls(samples=thin(samples), summary=summary, errors=errors, error=error)


class Measurement(_Model):
    """One operation of one provider."""

    op: str = Field(description="stable id, e.g. exec_true, upload_1MiB (compare matches on it)")
    label: str
    group: str
    status: Status
    note: str | None = None
    grainchain: Series = Field(default_factory=Series)
    raw: Series | None = Field(None, description="the same operation without grainchain, interleaved")
    extra: dict[str, float] = Field(default_factory=dict, description="e.g. throughput of a batch")

    @property
    def ratio(self) -> float | None:
        """grainchain p50 / raw p50."""
        ours = self.grainchain.summary
        theirs = self.raw.summary if self.raw is not None else None
        if ours is None or theirs is None or theirs.p50 <= 0:
            return None
        return ours.p50 / theirs.p50


class ProviderResult(_Model):
    provider: str
    config: dict[str, Any] = Field(default_factory=dict, description="the SandboxConfig fields that were set")
    raw_baseline: str | None = Field(None, description="what the raw side does, or None")
    capabilities: dict[str, str] = Field(default_factory=dict)
    error: str | None = Field(None, description="why the provider's run stopped early")
    measurements: list[Measurement] = Field(default_factory=list)

    def get(self, op: str) -> Measurement | None:
        return next((m for m in self.measurements if m.op == op), None)


class Machine(_Model):
    cpu_count: int | None = None
    cpu_model: str | None = None
    memory_bytes: int | None = None
    os: str | None = None
    kernel: str | None = None
    python: str | None = None
    grainchain_version: str | None = None
    grainchain_commit: str | None = None
    docker_engine: str | None = None


class RunSettings(_Model):
    providers: list[str]
    iterations: int
    warmup: int
    quick: bool = False
    sizes: dict[str, Any] = Field(default_factory=dict)


class BenchmarkRun(_Model):
    schema_version: int = SCHEMA_VERSION
    started_at: datetime
    duration_seconds: float = 0.0
    machine: Machine = Field(default_factory=Machine)
    settings: RunSettings
    import_time: Measurement | None = None
    providers: list[ProviderResult] = Field(default_factory=list)

    def provider(self, name: str) -> ProviderResult | None:
        return next((p for p in self.providers if p.provider == name), None)

    @property
    def problems(self) -> list[str]:
        """Everything that went wrong, one line each (empty for a clean run)."""
        found = []
        for result in self.providers:
            if result.error:
                found.append(f"{result.provider}: {result.error}")
            for m in result.measurements:
                for side, series in (("grainchain", m.grainchain), ("raw", m.raw)):
                    if series is not None and series.errors:
                        found.append(
                            f"{result.provider} {m.label} ({side}): {series.errors} failed: {series.error}"
                        )
        return found


class ResultsError(ValueError):
    """A file that is not a readable benchmark result."""


def load_run(path: Path) -> BenchmarkRun:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        run = BenchmarkRun.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ResultsError(
            f"{path} is not a grainchain benchmark result ({exc.error_count()} problems; first: "
            f"{where}: {first['msg']})"
        ) from None
    if run.schema_version > SCHEMA_VERSION:
        raise ResultsError(
            f"{path} has results schema {run.schema_version}; this grainchain reads up to {SCHEMA_VERSION}"
        )
    return run


def save_run(run: BenchmarkRun, path: Path) -> None:
    path.write_text(run.model_dump_json(indent=1) + "\n", encoding="utf-8")


def thin(samples: list[float], limit: int = MAX_STORED_SAMPLES) -> list[float]:
    """At most `limit` samples, evenly spaced in time order (keeps drift visible), first and last kept."""
    if len(samples) <= limit:
        return list(samples)
    step = (len(samples) - 1) / (limit - 1)
    return [samples[round(i * step)] for i in range(limit)]
