"""Order statistics of timing samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the two nearest ranks (numpy's default method), so that
    p50 of an even count is the mean of the two middle samples."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Summary(BaseModel):
    """Seconds. p25/p75 are kept so that a comparison can judge noise without the raw samples."""

    count: int
    min: float
    p25: float
    p50: float
    p75: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("summary of no samples")
        return cls(
            count=len(samples),
            min=min(samples),
            p25=percentile(samples, 25),
            p50=percentile(samples, 50),
            p75=percentile(samples, 75),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            max=max(samples),
            mean=math.fsum(samples) / len(samples),
        )

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median: how much this operation's time varies."""
        return (self.p75 - self.p25) / self.p50 if self.p50 > 0 else 0.0
