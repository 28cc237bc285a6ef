"""`grainchain benchmark`: the statistics, the regression judgement of `compare`, and real quick runs against
local and (when an engine is there) docker. Nothing here asserts how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from _support import grainchain_script
from conftest import sandbox_processes

from grainchain.benchmark import compare_runs, load_run
from grainchain.benchmark.compare import Verdict
from grainchain.benchmark.raw import RAW_LABEL
from grainchain.benchmark.results import (
    BenchmarkRun,
    Measurement,
    ProviderResult,
    RunSettings,
    Series,
    Status,
)
from grainchain.benchmark.runner import Options, plan
from grainchain.benchmark.stats import Summary, percentile
from grainchain.providers.docker import _engine as dk

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def benchmark_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grainchain_script(), "benchmark", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


# -- statistics -------------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    samples = [7.0, 1.0, 10.0, 3.0, 2.0, 9.0, 4.0, 6.0, 5.0, 8.0]  # 1..10, shuffled
    # the values numpy.percentile gives with its default (linear) method
    assert percentile(samples, 50) == pytest.approx(5.5)
    assert percentile(samples, 25) == pytest.approx(3.25)
    assert percentile(samples, 95) == pytest.approx(9.55)
    assert percentile(samples, 99) == pytest.approx(9.91)
    assert (percentile(samples, 0), percentile(samples, 100)) == (1.0, 10.0)
    assert percentile([4.0, 2.0, 3.0], 50) == 3.0
    assert percentile([0.5], 99) == 0.5
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summary_of_samples() -> None:
    summary = Summary.of([0.004, 0.001, 0.002, 0.003])
    assert (summary.count, summary.min, summary.max) == (4, 0.001, 0.004)
    assert summary.p50 == pytest.approx(0.0025)
    assert summary.mean == pytest.approx(0.0025)
    assert summary.spread == pytest.approx((0.00325 - 0.00175) / 0.0025)


# -- compare ----------------------------------------------------------------------------------------------


def _measurement(op: str, samples: list[float], status: Status = Status.ok) -> Measurement:
    return Measurement(
        op=op, label=op, group="exec", status=status, grainchain=Series.of(samples, 0 if samples else 3, None)
    )


def _run(measurements: list[Measurement]) -> BenchmarkRun:
    return BenchmarkRun(
        started_at=datetime.now(UTC),
        settings=RunSettings(providers=["local"], iterations=20, warmup=2),
        providers=[ProviderResult(provider="local", measurements=measurements)],
    )


def _around(center: float, spread: float, n: int = 20) -> list[float]:
    """n samples evenly spread over center ± spread (relative)."""
    return [center * (1 - spread + 2 * spread * i / (n - 1)) for i in range(n)]


def test_compare_flags_a_real_regression_and_not_noise() -> None:
    old = _run(
        [
            _measurement("doubled", _around(0.010, 0.05)),
            _measurement("noisy", _around(0.010, 0.40)),  # IQR ~40% of its median
            _measurement("steady", _around(0.010, 0.02)),
            _measurement("halved", _around(0.010, 0.05)),
            _measurement("breaks", _around(0.010, 0.05)),
            _measurement("unsupported", [], Status.unsupported),
        ]
    )
    new = _run(
        [
            _measurement("doubled", _around(0.020, 0.05)),
            _measurement("noisy", _around(0.0125, 0.40)),  # +25%: inside its own noise
            _measurement("steady", _around(0.0105, 0.02)),  # +5%: inside the 10% threshold
            _measurement("halved", _around(0.005, 0.05)),
            _measurement("breaks", [], Status.error),
            _measurement("unsupported", [], Status.unsupported),
        ]
    )
    result = compare_runs(old, new, threshold=0.10)
    verdicts = {row.op: row.verdict for row in result.rows}
    assert verdicts == {
        "doubled": Verdict.regression,
        "noisy": Verdict.same,
        "steady": Verdict.same,
        "halved": Verdict.improvement,
        "breaks": Verdict.broken,
        "unsupported": Verdict.unsupported,
    }
    noisy = next(row for row in result.rows if row.op == "noisy")
    assert noisy.band is not None
    assert noisy.band > 0.25
    assert {row.op for row in result.regressions} == {"doubled", "breaks"}
    # a change too small in absolute terms is jitter, whatever its ratio
    assert compare_runs(old, new, min_delta=0.02).regressions[0].op == "breaks"


def test_compare_cli_exits_one_on_a_regression(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(
        _run([_measurement("exec_true", _around(0.01, 0.05))]).model_dump_json()
    )
    (tmp_path / "new.json").write_text(
        _run([_measurement("exec_true", _around(0.03, 0.05))]).model_dump_json()
    )
    slower = benchmark_cli("compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"))
    assert slower.returncode == 1, slower.stderr
    assert "slower" in slower.stdout
    assert "interquartile range" in slower.stdout
    same = benchmark_cli("compare", str(tmp_path / "old.json"), str(tmp_path / "old.json"))
    assert same.returncode == 0, same.stderr
    assert "no regression beyond noise" in same.stdout


def test_old_or_foreign_results_files(tmp_path: Path) -> None:
    # a file of an older version: no summaries, an unknown field; the summary is computed on loading
    minimal = {
        "started_at": "2026-01-01T00:00:00Z",
        "settings": {"providers": ["local"], "iterations": 2, "warmup": 0},
        "some_future_field": 1,
        "providers": [
            {
                "provider": "local",
                "measurements": [
                    {
                        "op": "exec_true",
                        "label": "exec",
                        "group": "exec",
                        "status": "ok",
                        "grainchain": {"samples": [0.001, 0.003]},
                    }
                ],
            }
        ],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(minimal))
    summary = load_run(path).providers[0].measurements[0].grainchain.summary
    assert summary is not None
    assert summary.p50 == pytest.approx(0.002)
    (tmp_path / "other.json").write_text('{"hello": 1}')
    result = benchmark_cli("compare", str(path), str(tmp_path / "other.json"))
    assert result.returncode == 1
    assert "is not a grainchain benchmark result" in result.stderr
    assert "Traceback" not in result.stderr


# -- real runs --------------------------------------------------------------------------------------------


def test_import_grainchain_loads_no_benchmark_or_plotting_code() -> None:
    probe = "import sys, grainchain, grainchain.cli; print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'grainchain.benchmark'))))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _planned(quick: bool, iterations: int) -> dict[str, int]:
    """op id -> the measured iterations the plan gives it."""
    steps = plan(Options(providers=["x"], iterations=iterations, warmup=1, quick=quick))
    return {op.id: step.iterations for step in steps for op in step.ops}


def _check_outputs(out: Path) -> BenchmarkRun:
    """The three files exist and are what they claim; the JSON validates."""
    assert (out / "chart.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "summary.md").read_text().startswith("# grainchain benchmark")
    return load_run(out / "results.json")


def _check_sane(result: ProviderResult, planned: dict[str, int], skip: set[str] = frozenset()) -> None:
    """Every planned operation is there; measured ones have the planned count of positive, finite,
    plausible samples and a raw baseline to compare with."""
    assert [m.op for m in result.measurements] == list(planned)
    for m in result.measurements:
        if m.op in skip or m.status is Status.unsupported:
            continue
        assert m.status is Status.ok, (m.op, m.grainchain.error)
        assert m.grainchain.errors == 0, m.grainchain.error
        summary = m.grainchain.summary
        assert summary is not None
        assert summary.count == planned[m.op] == len(m.grainchain.samples)
        assert 0 < summary.min <= summary.p50 <= summary.p95 <= summary.max < 120, m.op
        if m.op == "close_after_timeout":  # grainchain's own: the raw calls have no timeout
            assert m.raw is None
            continue
        assert m.raw is not None, m.op
        assert m.raw.errors == 0, (m.op, m.raw.error)
        assert m.ratio is not None, m.op
        assert m.ratio > 0, m.op


@pytest.fixture(scope="module")
def local_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One quick benchmark of local (a few seconds), shared by the tests that read it."""
    base = tmp_path_factory.mktemp("bench-local")
    out, state = base / "out", base / "state"
    env = {"GRAINCHAIN_STATE_DIR": str(state), "GRAINCHAIN_CONFIG": str(base / "none.toml")}
    done = benchmark_cli("run", "--quick", "--provider", "local", "--output", str(out), env=env)
    # what the autouse fixture checks for each test's own state dir
    assert not sandbox_processes(state), "sandbox processes left running by the benchmark"
    assert not list((state / "local" / "sandboxes").iterdir()), "sandboxes left behind"
    assert not list((state / "local" / "snapshots").iterdir()), "snapshots left behind"
    assert not list(state.glob("bench-raw-*")), "raw baseline workspaces left behind"
    return done, out


def test_quick_local_run_writes_json_markdown_and_chart(local_run: tuple[Any, Path]) -> None:
    done, out = local_run
    assert done.returncode == 0, done.stdout + done.stderr
    run = _check_outputs(out)
    assert run.settings.quick
    assert run.settings.providers == ["local"]
    assert run.machine.cpu_count
    assert run.machine.kernel
    assert run.machine.grainchain_version
    (result,) = run.providers
    assert result.error is None
    assert result.raw_baseline
    # local's memory snapshots (where CRIU is) have no raw baseline yet in grainchain/benchmark/raw.py
    _check_sane(result, _planned(quick=True, iterations=3), skip={"memory_snapshot", "terminate", "wake_up"})
    assert run.import_time is not None
    assert run.import_time.ratio is not None
    summary = (out / "summary.md").read_text()
    assert "| exec true |" in summary
    assert "**Quick run**" in summary
    assert "exec true" in done.stdout  # the table, on the terminal too


def test_memory_snapshots_on_local_are_reported_as_this_machine_has_them(local_run: tuple[Any, Path]) -> None:
    """Local takes memory snapshots where CRIU works (root, namespaces); elsewhere they are unsupported."""
    done, out = local_run
    result = load_run(out / "results.json").providers[0]
    supported = result.capabilities["snapshot.memory"] != "unsupported"
    for op in ("memory_snapshot", "terminate", "wake_up"):
        m = result.get(op)
        assert m is not None
        assert m.grainchain.errors == 0
        if supported:
            assert m.status is Status.ok, (op, m.grainchain.error)
            continue
        assert m.status is Status.unsupported
        assert m.note
        assert "snapshot.memory" in m.note
    assert done.returncode == 0  # unsupported is not a failure
    if not supported:
        assert (
            "Unsupported (memory snapshot, terminate, wake_up (memory))" in (out / "summary.md").read_text()
        )


@pytest.fixture
def docker_tests() -> ModuleType:
    """tests/test_docker.py, whose import skips without an engine (fails with GRAINCHAIN_REQUIRE_DOCKER=1)."""
    import test_docker

    return test_docker


def _raw_leftovers(run_marker: str) -> list[str]:
    """Containers and images of the raw baseline that carry this test run's marker (other runs of the
    benchmark may be going on)."""
    endpoint = dk.engine_endpoint()
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    filters = {"filters": json.dumps({"label": [f"{RAW_LABEL}=1"]})}
    with httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=10) as client:
        found = [
            ("containers", c["Id"])
            for c in client.get("/containers/json", params={"all": "1", **filters}).json()
        ]
        found += [("images", i["Id"]) for i in client.get("/images/json", params=filters).json()]
        return [
            f"{kind} {ident}"
            for kind, ident in found
            if run_marker
            in ((client.get(f"/{kind}/{ident}/json").json().get("Config") or {}).get("Env") or [])
        ]


@pytest.mark.slow
def test_quick_docker_run(docker_tests: ModuleType, tmp_path: Path) -> None:
    # the busybox test image has no python3: that one operation fails, is reported, and makes the exit 1
    name, value = docker_tests.RUN.split("=")
    config = json.dumps({"image": docker_tests.IMAGE, "environment_vars": {name: value}})
    done = benchmark_cli(
        "run", "--quick", "-p", "docker", "--config", f"docker={config}", "-o", str(tmp_path)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    run = _check_outputs(tmp_path)
    assert run.machine.docker_engine
    (result,) = run.providers
    python = result.get("exec_python")
    assert python is not None
    assert python.status is Status.error
    assert python.grainchain.error
    assert "exited 127" in python.grainchain.error
    assert "exec python3 -c pass: 4 failed attempts" in done.stdout  # 1 warm-up + 3 measured
    _check_sane(result, _planned(quick=True, iterations=3), skip={"exec_python"})
    memory = result.get("memory_snapshot")
    assert memory is not None
    supported = {result.capabilities["snapshot.memory"], result.capabilities["lifecycle.terminate_wake"]}
    assert (memory.status is Status.unsupported) == ("unsupported" in supported)
    assert not docker_tests._our_containers(), "grainchain containers left behind"
    assert not _raw_leftovers(docker_tests.RUN), "raw baseline containers or images left behind"
