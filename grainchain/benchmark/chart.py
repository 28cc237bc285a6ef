"""chart.png: p50 and p95 bars per provider and operation, with the raw baseline's p50 beside them.

Imports matplotlib (the `bench` extra), so only the benchmark's output step imports this module.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt

from grainchain.benchmark.results import BenchmarkRun, Status


def draw_chart(run: BenchmarkRun, path: Path) -> None:
    providers = [p for p in run.providers if any(m.status is Status.ok for m in p.measurements)]
    if not providers:  # still a picture, saying why it is empty
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no provider was measured", ha="center", va="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    rows = max(len([m for m in p.measurements if m.status is Status.ok]) for p in providers)
    fig, axes = plt.subplots(
        1, len(providers), figsize=(6.5 * len(providers), 1.5 + 0.42 * rows), squeeze=False
    )
    for ax, result in zip(axes[0], providers, strict=True):
        measured = [m for m in result.measurements if m.status is Status.ok and m.grainchain.summary]
        labels = [m.label for m in measured]
        y = list(range(len(measured)))
        height = 0.27
        p50 = [m.grainchain.summary.p50 * 1e3 for m in measured if m.grainchain.summary]
        p95 = [m.grainchain.summary.p95 * 1e3 for m in measured if m.grainchain.summary]
        raw = [
            (i + height, m.raw.summary.p50 * 1e3)
            for i, m in enumerate(measured)
            if m.raw is not None and m.raw.summary is not None
        ]
        ax.barh([i - height for i in y], p50, height, label="grainchain p50", color="#1f77b4")
        ax.barh(y, p95, height, label="grainchain p95", color="#aec7e8")
        if raw:
            ax.barh(
                [at for at, _ in raw],
                [v for _, v in raw],
                height,
                label="raw p50",
                color="#7f7f7f",
                hatch="//",
            )
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")  # microseconds (local files) to seconds (docker snapshots) on one axis
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_title(result.provider)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    title = f"grainchain benchmark, {run.started_at:%Y-%m-%d}" + (
        " (quick run)" if run.settings.quick else ""
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the legends below the axes
    plt.close(fig)
