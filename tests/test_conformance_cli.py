"""`grainchain conformance`, run as the installed console script in a subprocess.

The autouse fixtures of conftest.py point GRAINCHAIN_STATE_DIR at a temporary directory (passed on through
os.environ) and fail a test that leaves sandbox processes behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _support import grainchain_script

from grainchain._generated.features import Feature
from grainchain.models import SupportLevel
from grainchain.registry import get_provider
from tests.providers import memory


def conformance_cli(
    *args: str, pythonpath: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {})}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [grainchain_script(), "conformance", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """feature -> [declared mark, level, promises, passed, failed, skipped, result] from the summary table."""
    features = {f.value for f in Feature} | {"(general)"}
    return {
        cells[0]: [cell.strip() for cell in cells[1:]]
        for line in stdout.splitlines()
        if (cells := line.split(maxsplit=7)) and cells[0] in features  # the result may be two words
    }


@pytest.mark.slow
@pytest.mark.timeout(600)  # a whole suite run
def test_conformance_of_local_passes_and_lists_every_feature() -> None:
    # the table is what is checked here (the whole suite runs against local in the README's test command)
    result = conformance_cli(
        "local", "--", "--grainchain-client", "sync", "-k", "test_declaration or test_exec"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    rows = _table_rows(result.stdout)
    assert set(rows) == {f.value for f in Feature} | {"(general)"}
    local = get_provider("local")
    for feature in Feature:
        _mark, level, promises, passed, failed, _skipped, verdict = rows[feature.value]
        assert level.partition("→")[0] == local.level(feature).value  # declared (→✗: lacking here)
        checked, total = map(int, promises.split("/"))
        assert checked == total > 0, f"{feature.value}: {promises} promises checked"
        assert failed == "0"
        assert verdict == ("passed" if int(passed) else "untested")
    supported = sum(local.level(f) is not SupportLevel.unsupported for f in Feature)
    assert f"features declared: {supported} supported / {len(Feature) - supported} unsupported;" in (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("conformance of 'local': passed")


def test_unknown_provider_is_a_usage_error_in_one_line() -> None:
    line = assert_one_line_error(conformance_cli("nope"), 2)
    assert "unknown provider 'nope'; known providers: daytona, docker, e2b, local" in line


def test_provider_without_adapter_fails_in_one_line() -> None:
    line = assert_one_line_error(conformance_cli("morph"), 1)
    assert "'morph' is planned but has no adapter yet" in line


@pytest.mark.parametrize(
    ("config", "message"),
    [("{nope", "--config is not valid JSON"), ('{"memory_limit": "lots"}', "memory_limit")],
)
def test_bad_config_is_a_usage_error_in_one_line(config: str, message: str) -> None:
    assert message in assert_one_line_error(conformance_cli("local", "--config", config), 2)


def test_bad_pytest_argument_is_a_usage_error() -> None:
    result = conformance_cli("local", "--", "--no-such-pytest-option")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the suite did not run to the end")


def test_missing_suite_dependencies_name_the_extra(tmp_path: Path) -> None:
    (tmp_path / "hypothesis.py").write_text("raise ImportError('simulated: hypothesis is not installed')\n")
    line = assert_one_line_error(conformance_cli("local", pythonpath=tmp_path), 1)
    assert "needs hypothesis: pip install 'grainchain[conformance]'" in line


def test_failing_suite_exits_one_and_lists_the_failed_tests() -> None:
    # the memory test provider (registered in the command's process and in its pytest's), declaring a level
    # for two features only
    env = memory.subprocess_env({"exec": "native", "files": "native"})
    result = conformance_cli("memory", "--", "-k", "test_declaration", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    rows = _table_rows(result.stdout)
    # declared, promises, passed, failed, skipped (each test once per client), result
    assert rows["(general)"] == ["-", "16/16", "4", "2", "0", "FAILED"]
    assert rows["snapshot.filesystem"][:2] == ["not", "declared"]
    assert rows["exec"][1] == "native"
    failed = result.stdout.split("failed tests (2):", 1)[1].split()
    assert failed[0].endswith("test_declaration.py::test_declares_a_level_for_every_feature[async]")
    assert failed[1].endswith("test_declaration.py::test_declares_a_level_for_every_feature[sync]")
    assert result.stdout.rstrip().endswith("conformance of 'memory': FAILED (pytest exit status 1)")
