"""`grainchain benchmark`: performance numbers per provider, and grainchain's overhead over raw calls.

    runner.py   the plan of steps and the measuring loop (grainchain and raw baseline interleaved)
    raw.py      raw baselines: the same operations without grainchain, one per provider
    stats.py    percentiles and summaries
    results.py  the results.json schema (pydantic), load/save
    machine.py  what the numbers were measured on
    report.py   summary.md and the output directory
    chart.py    chart.png (matplotlib, the `bench` extra; imported only when drawing)
    compare.py  regressions between two runs, judged against their own noise

Not imported by `import grainchain`.
"""

from grainchain.benchmark.compare import Comparison, compare_runs
from grainchain.benchmark.report import write_outputs
from grainchain.benchmark.results import BenchmarkRun, ResultsError, load_run
from grainchain.benchmark.runner import Options, run_benchmark

__all__ = [
    "BenchmarkRun",
    "Comparison",
    "Options",
    "ResultsError",
    "compare_runs",
    "load_run",
    "run_benchmark",
    "write_outputs",
]
