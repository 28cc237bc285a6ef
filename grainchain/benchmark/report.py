"""The Markdown summary (summary.md) and the output directory as a whole."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from grainchain.benchmark.results import BenchmarkRun, Measurement, ProviderResult, Status, save_run

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
CHART_FILE = "chart.png"
CHART_INSTALL_HINT = "pip install 'grainchain[bench]'"

TIMING_NOTE = (
    "Times are client-side wall-clock milliseconds (`time.perf_counter` around one public API call). "
    "*raw* is the same operation done without grainchain, interleaved with it iteration by iteration; "
    "*ratio* = grainchain p50 / raw p50."
)


def ms(seconds: float) -> str:
    """Milliseconds with about three significant digits."""
    value = seconds * 1e3
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _size(n: int | None) -> str:
    return "" if n is None else f"{n / 2**30:.0f} GiB"


def machine_line(run: BenchmarkRun) -> str:
    m = run.machine
    parts = [
        f"grainchain {m.grainchain_version}" + (f" ({m.grainchain_commit})" if m.grainchain_commit else ""),
        m.python or "",
        m.os or "",
        f"kernel {m.kernel}" if m.kernel else "",
        f"{m.cpu_count} CPUs ({m.cpu_model})" if m.cpu_count else (m.cpu_model or ""),
        _size(m.memory_bytes),
        f"docker engine {m.docker_engine}" if m.docker_engine else "",
    ]
    return ", ".join(p for p in parts if p)


def settings_line(run: BenchmarkRun) -> str:
    s = run.settings
    sizes = s.sizes
    text = (
        f"{s.iterations} iterations per operation (heavy ones fewer: see n) after {s.warmup} warm-up "
        f"iteration{'' if s.warmup == 1 else 's'} that {'is' if s.warmup == 1 else 'are'} not counted"
    )
    if sizes:
        text += (
            f"; transfers of {', '.join(sizes.get('transfers', []))}; a directory of "
            f"{sizes.get('list_entries')} entries; workspaces of {' and '.join(sizes.get('workspaces', []))}; "
            f"{sizes.get('concurrency')} concurrent sandboxes"
        )
    return text + "."


QUICK_NOTE = (
    "**Quick run** (`--quick`): tiny sizes and few iterations, to check that the benchmark works; "
    "these numbers are not comparable with a full run and not for publishing."
)

OPERATIONS_NOTE = (
    "*create* lasts until a command can run (`with Sandbox(...)`: settings, provider, workspace or "
    "container); *first exec* is the first `true` in it; *concurrent* is the wall time of a batch of "
    "sandboxes created, used once (`true`) and closed at the same time through the async client."
)

TABLE_HEADER = ["operation", "p50", "p95", "p99", "min", "max", "n", "raw p50", "ratio"]


def _row(m: Measurement) -> list[str]:
    blank = [""] * (len(TABLE_HEADER) - 2)
    if m.status is Status.unsupported:
        return [m.label, "unsupported", *blank]
    s = m.grainchain.summary
    if s is None:
        return [m.label, "error", *blank]
    raw = m.raw.summary if m.raw is not None else None
    failed = "".join(
        f" ({series.errors} {side}failed)"
        for side, series in (("", m.grainchain), ("raw ", m.raw))
        if series is not None and series.errors
    )
    return [
        m.label + failed,
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(s.min),
        ms(s.max),
        str(s.count),
        ms(raw.p50) if raw is not None else "",
        ratio(m.ratio),
    ]


def table_rows(result: ProviderResult) -> list[list[str]]:
    return [_row(m) for m in result.measurements]


def provider_table(result: ProviderResult) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|---|" + "--:|" * (len(TABLE_HEADER) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def table_notes(result: ProviderResult) -> list[str]:
    """What the table cannot hold: why operations are unsupported or failed, and batch throughput."""
    notes = []
    unsupported: dict[str, list[str]] = {}
    for m in result.measurements:
        if m.status is Status.unsupported:
            unsupported.setdefault(m.note or "", []).append(m.label)
    for reason, labels in unsupported.items():
        notes.append(f"Unsupported ({', '.join(labels)}): {reason or 'no reason given'}.")
    for m in result.measurements:
        for side, series in (("", m.grainchain), (" raw", m.raw)):
            if series is not None and series.errors:
                notes.append(f"{m.label}{side}: {series.errors} failed attempts; first: {series.error}")
        if m.group == "concurrency" and m.grainchain.summary is not None and m.extra:
            raw = m.raw.summary if m.raw is not None else None
            raw_rate = f" (raw: {m.extra['sandboxes'] / raw.p50:.1f}/s)" if raw else ""
            notes.append(
                f"{m.label}: {m.extra['sandboxes_per_second']:.1f} sandboxes/s{raw_rate} at the p50 batch "
                f"time; {m.extra['failed_sandboxes']:.0f} sandboxes failed."
            )
    return notes


def import_line(run: BenchmarkRun) -> str | None:
    """`import grainchain` as ms over a bare interpreter first (the figure its budget is about), then the
    absolute times and what else was measured."""
    m = run.import_time
    if m is None or m.grainchain.summary is None:
        return None
    ours = m.grainchain.summary.p50
    base = m.raw.summary.p50 if m.raw is not None and m.raw.summary is not None else None
    overhead = m.extra.get("overhead_seconds", None if base is None else ours - base)
    if overhead is None:
        text = f"`import grainchain`: {ms(ours)} ms for `python -c 'import grainchain'`"
    else:
        paired = "median of paired runs" if "overhead_seconds" in m.extra else "difference of the p50s"
        sign = "+" if overhead >= 0 else "-"
        text = f"`import grainchain`: {sign}{ms(abs(overhead))} ms over a bare interpreter ({paired}"
        if "budget_seconds" in m.extra:
            budget = m.extra["budget_seconds"]
            text += f"; budget {ms(budget)} ms: {'within' if overhead < budget else 'OVER'}"
        text += f"): {ms(ours)} ms for `python -c 'import grainchain'`"
    if base is not None:
        text += f" vs {ms(base)} ms for `python -c pass` (p50 of {m.grainchain.summary.count})"
    if "sandbox_import_overhead_seconds" in m.extra:
        text += f"; `from grainchain import Sandbox`: +{ms(m.extra['sandbox_import_overhead_seconds'])} ms"
    if "importtime_cumulative_seconds" in m.extra:
        text += f"; `-X importtime` cumulative {ms(m.extra['importtime_cumulative_seconds'])} ms"
    if m.note:
        text += f"; {m.note}"
    return text + "."


def markdown(run: BenchmarkRun) -> str:
    out = ["# grainchain benchmark", ""]
    when = run.started_at.strftime("%Y-%m-%d %H:%M UTC")
    out += [f"Run {when}, {run.duration_seconds:.0f} s. {machine_line(run)}.", ""]
    out += [settings_line(run), ""]
    if run.settings.quick:
        out += [QUICK_NOTE, ""]
    out += [TIMING_NOTE + " " + OPERATIONS_NOTE, ""]
    if line := import_line(run):
        out += [line, ""]
    for result in run.providers:
        out += [f"## {result.provider}", ""]
        if result.config:
            out += [f"Config: `{json.dumps(result.config)}`.", ""]
        if result.raw_baseline:
            out += [f"Raw baseline: {result.raw_baseline}.", ""]
        if result.error:
            out += [f"**Not measured**: {result.error}", ""]
        if result.measurements:
            out += [provider_table(result), ""]
        if notes := table_notes(result):
            out += [f"* {note}" for note in notes] + [""]
    if problems := run.problems:
        out += ["## Problems", ""] + [f"* {p}" for p in problems] + [""]
    return "\n".join(out)


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def write_outputs(run: BenchmarkRun, directory: Path, *, chart: bool = True) -> Written:
    """results.json, summary.md and (with matplotlib installed) chart.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = Written()
    save_run(run, directory / RESULTS_FILE)
    (directory / SUMMARY_FILE).write_text(markdown(run), encoding="utf-8")
    written.files += [directory / RESULTS_FILE, directory / SUMMARY_FILE]
    if chart:
        try:
            from grainchain.benchmark.chart import draw_chart  # matplotlib: loaded only here
        except ImportError as exc:
            written.warnings.append(f"no chart: {exc.name or exc} is not installed ({CHART_INSTALL_HINT})")
        else:
            draw_chart(run, directory / CHART_FILE)
            written.files.append(directory / CHART_FILE)
    return written
