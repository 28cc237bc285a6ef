"""The reliability suite's counts, summed over a test run and printed at its end (tests/conftest.py):
per provider, the faults injected (clients killed mid-operation, bad inputs), the data lost, the leftovers
found afterwards and the untyped errors (outside grainchain's error tree). Every one but the first must be 0;
the tests that count them assert that themselves, this is the run's overview."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counts:
    faults: int = 0
    lost: int = 0
    leftovers: int = 0
    untyped: int = 0


COUNTS: dict[str, Counts] = {}


def record(provider: str, *, faults: int = 0, lost: int = 0, leftovers: int = 0, untyped: int = 0) -> None:
    counts = COUNTS.setdefault(provider, Counts())
    counts.faults += faults
    counts.lost += lost
    counts.leftovers += leftovers
    counts.untyped += untyped


def summary() -> list[str]:
    """The table's lines (none when no reliability test ran)."""
    if not COUNTS:
        return []
    lines = [f"{'provider':<26}{'faults':>8}{'lost':>6}{'leftovers':>11}{'untyped':>9}"]
    for name, c in sorted(COUNTS.items()):
        lines.append(f"{name:<26}{c.faults:>8}{c.lost:>6}{c.leftovers:>11}{c.untyped:>9}")
    return lines
