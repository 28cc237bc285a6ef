"""`grainchain benchmark compare OLD NEW`: which operations got slower or faster beyond noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from grainchain.benchmark.results import BenchmarkRun, Measurement, Status
from grainchain.benchmark.stats import Summary

DEFAULT_THRESHOLD = 0.10
DEFAULT_MIN_DELTA = 0.0002  # seconds: below this, scheduler and timer jitter dominate
MIN_SAMPLES = 3  # fewer cannot show their own spread: not judged

NOISE_RULE = (
    "A change counts when new p50 / old p50 lies outside 1 ± band, where band is the larger of the threshold "
    "and the noise each run measured itself (its interquartile range relative to its median, (p75 - p25) / "
    f"p50), and the two p50s also differ by more than the minimum delta. Operations with fewer than "
    f"{MIN_SAMPLES} samples in either run are not judged."
)


class Verdict(StrEnum):
    regression = "slower"
    improvement = "faster"
    same = "within noise"
    broken = "now fails"
    fixed = "works again"
    added = "new"
    removed = "gone"
    unsupported = "unsupported"
    too_few = "too few samples"
    not_compared = "not compared"


@dataclass
class Row:
    provider: str
    op: str
    label: str
    verdict: Verdict
    old: Summary | None = None
    new: Summary | None = None
    change: float | None = None  # new p50 / old p50
    band: float | None = None
    old_ratio: float | None = None  # grainchain / raw, old run
    new_ratio: float | None = None
    note: str | None = None


@dataclass
class Comparison:
    threshold: float
    min_delta: float
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict in (Verdict.regression, Verdict.broken)]


def judge(old: Summary, new: Summary, threshold: float, min_delta: float) -> tuple[Verdict, float, float]:
    """(verdict, new p50 / old p50, the noise band used) for one operation measured in both runs."""
    band = max(threshold, old.spread, new.spread)
    change = new.p50 / old.p50 if old.p50 > 0 else float("inf")
    if abs(new.p50 - old.p50) <= min_delta:
        return Verdict.same, change, band
    if change > 1 + band:
        return Verdict.regression, change, band
    if change < 1 / (1 + band):
        return Verdict.improvement, change, band
    return Verdict.same, change, band


def _row(provider: str, old: Measurement | None, new: Measurement | None, c: Comparison) -> Row:
    m = new or old
    assert m is not None
    row = Row(provider, m.op, m.label, Verdict.not_compared)
    if old is None or new is None:
        row.verdict = Verdict.added if old is None else Verdict.removed
        return row
    row.old, row.new = old.grainchain.summary, new.grainchain.summary
    row.old_ratio, row.new_ratio = old.ratio, new.ratio
    if old.status is Status.ok and new.status is Status.error:
        row.verdict, row.note = Verdict.broken, new.grainchain.error
    elif old.status is Status.error and new.status is Status.ok:
        row.verdict = Verdict.fixed
    elif old.status is Status.unsupported and new.status is Status.unsupported:
        row.verdict = Verdict.unsupported
    elif row.old is not None and row.new is not None:
        row.verdict, row.change, row.band = judge(row.old, row.new, c.threshold, c.min_delta)
        if min(row.old.count, row.new.count) < MIN_SAMPLES:
            row.verdict, row.band = Verdict.too_few, None
    else:
        row.note = f"{old.status.value} → {new.status.value}"
    return row


def _machine_warnings(old: BenchmarkRun, new: BenchmarkRun) -> list[str]:
    warnings = []
    for name in ("cpu_model", "cpu_count", "kernel", "python", "docker_engine"):
        a, b = getattr(old.machine, name), getattr(new.machine, name)
        if a != b and a is not None and b is not None:
            warnings.append(f"the machines differ in {name}: {a} vs {b}")
    for before in old.providers:
        after = new.provider(before.provider)
        if after is not None and before.raw_baseline != after.raw_baseline:
            warnings.append(
                f"the raw baseline of {before.provider} changed ({before.raw_baseline!r} -> "
                f"{after.raw_baseline!r}): its ratios do not compare"
            )
    if old.settings.quick != new.settings.quick or old.settings.sizes != new.settings.sizes:
        warnings.append(
            "the runs used different sizes (a --quick run?): only operations with the same id compare"
        )
    return warnings


def compare_runs(
    old: BenchmarkRun,
    new: BenchmarkRun,
    threshold: float = DEFAULT_THRESHOLD,
    min_delta: float = DEFAULT_MIN_DELTA,
) -> Comparison:
    result = Comparison(threshold=threshold, min_delta=min_delta, warnings=_machine_warnings(old, new))
    if old.import_time is not None or new.import_time is not None:
        result.rows.append(_row("python", old.import_time, new.import_time, result))
    names = [p.provider for p in old.providers] + [
        p.provider for p in new.providers if old.provider(p.provider) is None
    ]
    for name in names:
        before, after = old.provider(name), new.provider(name)
        ops = [m.op for m in (before.measurements if before else [])]
        ops += [m.op for m in (after.measurements if after else []) if m.op not in ops]
        for op in ops:
            a = before.get(op) if before else None
            b = after.get(op) if after else None
            result.rows.append(_row(name, a, b, result))
    return result
