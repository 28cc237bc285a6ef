"""Benchmark of the local provider's isolation, limits and snapshots (issue 5), next to raw baselines.

    .venv/bin/python benchmarks/local_isolation.py [--iterations N] [--output DIR]

Measures, on this machine, with time.perf_counter around each call:
  * exec latency of `true` (p50/p95): grainchain isolated (namespaces) and unisolated, each also with a
    pids_limit (a cgroup, entered by a launcher shell); raw `subprocess.run(["/bin/sh", "-c", "true"])`; raw `bwrap`
    with the holder's arguments per command (the raw spawn of the same isolation); raw `nsenter` into a
    holder (what each isolated command does, without grainchain around it). Interleaved, so that drift of
    the machine hits every column alike.
  * sandbox create (+ close) time, isolated and not;
  * filesystem snapshot and restore of a freshly written workspace of 1,000 files / 50 MB and of 5,000
    files / 50 MB, layered (overlayfs) and copied; the first command after a restore (it starts the holder);
  * memory snapshot (CRIU) of a sandbox with a background process, and its restore.
Writes results.json and results.md to DIR (default: benchmarks/results/local-<date>) and prints the table.
`grainchain benchmark run -p local` is the project-wide benchmark; this one answers issue 5's questions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from grainchain import SandboxConfig, SnapshotKind
from grainchain.providers.local import _isolation as iso
from grainchain.providers.local._hostproc import SHELL, scrubbed_environment
from grainchain.sync import Sandbox


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": p95 * 1000,
        "min_ms": ordered[0] * 1000,
    }


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def config(isolation: str, **provider: Any) -> SandboxConfig:
    return SandboxConfig(provider_config={"isolation": isolation, **provider})


def exec_latency(iterations: int, scratch: Path) -> dict[str, dict[str, float]]:
    workspace, tmp = scratch / "raw-ws", scratch / "raw-tmp"
    workspace.mkdir()
    tmp.mkdir()
    env = scrubbed_environment({"HOME": iso.WORKSPACE, "TMPDIR": iso.SANDBOX_TMP})
    holder = iso.start_holder(workspace, tmp, scratch / "holder.log", network="host", env=env)
    userns = iso.use_userns()
    bwrap_args = iso.holder_args(workspace, tmp, scratch / "unused", network="host", userns=userns)
    if not userns:  # the same namespaces and mounts on bwrap's own tmpfs root (a fresh one per command)
        bwrap_args = bwrap_args[3:-2]
    raw = {
        "raw subprocess": [SHELL, "-c", "true"],
        "raw bwrap (fresh per command)": ["bwrap", *bwrap_args, "--", SHELL, "-c", "true"],
        "raw nsenter into a holder": [*holder.enter_argv(None), SHELL, "-c", "true"],
    }
    sandboxes = {
        "grainchain isolated (default)": Sandbox("local", config("namespaces")).start(),
        "grainchain isolated, pids_limit (cgroup)": Sandbox(
            "local", config("namespaces", pids_limit=4096)
        ).start(),
        "grainchain unisolated (default)": Sandbox("local", config("none")).start(),
        "grainchain unisolated, pids_limit (cgroup)": Sandbox(
            "local", config("none", pids_limit=4096)
        ).start(),
    }
    samples: dict[str, list[float]] = {name: [] for name in [*raw, *sandboxes]}
    try:
        for i in range(iterations + 10):
            order = list(samples)
            if i % 2:
                order.reverse()
            for name in order:
                if name in raw:
                    argv = raw[name]
                    took = timed(partial(subprocess.run, argv, capture_output=True, check=True, env=env))
                else:
                    box = sandboxes[name]
                    took = timed(partial(box.execute, "true"))
                if i >= 10:  # warm-up
                    samples[name].append(took)
    finally:
        for box in sandboxes.values():
            box.close()
        holder.kill()
    return {name: quantiles(values) for name, values in samples.items()}


def create_time(iterations: int) -> dict[str, dict[str, float]]:
    results = {}
    for label, cfg in (("isolated", config("namespaces")), ("unisolated", config("none"))):
        creates, closes = [], []
        for _ in range(iterations):
            box = Sandbox("local", cfg)
            creates.append(timed(box.start))
            closes.append(timed(box.close))
        results[f"create, {label}"] = quantiles(creates)
        results[f"close, {label}"] = quantiles(closes)
    return results


def fill(box: Sandbox, files: int, total_mb: int) -> None:
    size = total_mb * 1024 * 1024 // files
    box.execute(
        f"mkdir -p data && head -c {size} /dev/urandom > seed && "
        f"i=0; while [ $i -lt {files} ]; do cp seed data/f$i; i=$((i+1)); done; rm seed",
        timeout=600,
    )


def snapshots(iterations: int) -> dict[str, dict[str, float]]:
    results = {}
    for files in (1000, 5000):
        for mode in ("layers", "copy"):
            create, restore, first = [], [], []
            for _ in range(iterations):
                with Sandbox("local", config("namespaces", snapshots=mode)) as box:
                    fill(box, files, 50)
                    snapshot_id = box.create_snapshot()  # warm: what was just written is in the upper
                    box.execute("echo change > change")
                    create.append(timed(box.create_snapshot))
                    box.execute("rm -rf data")
                    restore.append(timed(partial(box.restore_snapshot, snapshot_id)))
                    first.append(timed(partial(box.execute, "true")))
                    assert box.execute("ls data | wc -l").stdout.strip() == str(files)
                    for info in box.list_snapshots():
                        box.delete_snapshot(info.snapshot_id)
            label = f"{files} files / 50 MB, {mode}"
            results[f"snapshot, {label}"] = quantiles(create)
            results[f"restore, {label}"] = quantiles(restore)
            results[f"first exec after restore, {label}"] = quantiles(first)
            # the very first snapshot of freshly written data, for the layers mode (a freeze of it all)
    return results


def first_snapshot_of_fresh_data(iterations: int) -> dict[str, dict[str, float]]:
    results = {}
    for files in (1000, 5000):
        for mode in ("layers", "copy"):
            create = []
            for _ in range(iterations):
                with Sandbox("local", config("namespaces", snapshots=mode)) as box:
                    fill(box, files, 50)
                    create.append(timed(box.create_snapshot))
                    for info in box.list_snapshots():
                        box.delete_snapshot(info.snapshot_id)
            results[f"first snapshot of fresh data, {files} files / 50 MB, {mode}"] = quantiles(create)
    return results


def memory(iterations: int) -> dict[str, dict[str, float]]:
    dumps, restores = [], []
    with Sandbox("local", config("namespaces")) as box:
        if not box.supports("snapshot.memory"):
            return {}
        box.execute("(while :; do date +%s%N > tick; sleep 0.05; done) >/dev/null 2>&1 &")
        for _ in range(iterations):
            started = time.perf_counter()
            snapshot_id = box.create_snapshot(kind=SnapshotKind.memory)
            dumps.append(time.perf_counter() - started)
            restores.append(timed(partial(box.restore_snapshot, snapshot_id)))
            box.delete_snapshot(snapshot_id)
    return {
        "memory snapshot (CRIU dump)": quantiles(dumps),
        "memory restore (CRIU restore)": quantiles(restores),
    }


def markdown(results: dict[str, dict[str, dict[str, float]]], machine: dict[str, Any]) -> str:
    lines = [f"# Local provider benchmark ({machine['date']})", "", f"Machine: {machine}", ""]
    for section, rows in results.items():
        lines += [
            f"## {section}",
            "",
            "| operation | n | p50 ms | p95 ms | min ms |",
            "|---|---|---|---|---|",
        ]
        for name, q in rows.items():
            lines.append(f"| {name} | {q['n']} | {q['p50_ms']:.2f} | {q['p95_ms']:.2f} | {q['min_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="exec samples per column")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--only", default="exec,lifecycle,snapshots,memory", help="sections to run (comma-separated)"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    out = args.output or Path(__file__).parent / "results" / f"local-{datetime.now(UTC):%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "root": os.geteuid() == 0,
        "load": os.getloadavg(),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    if "exec" in only:
        with tempfile.TemporaryDirectory(prefix="grainchain-bench-local-") as scratch:
            results["exec latency (`true`)"] = exec_latency(args.iterations, Path(scratch))
    if "lifecycle" in only:
        results["sandbox lifecycle"] = create_time(max(10, args.iterations // 10))
    if "snapshots" in only:
        results["first filesystem snapshot of fresh data"] = first_snapshot_of_fresh_data(5)
        results["filesystem snapshots"] = snapshots(5)
    if "memory" in only:
        results["memory snapshots"] = memory(10)
    machine["load_after"] = os.getloadavg()  # another job on the machine shows here
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    text = markdown(results, machine)
    (out / "results.md").write_text(text)
    print(text)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
