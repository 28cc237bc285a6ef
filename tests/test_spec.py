"""The capability spec validates, and each kind of mistake in it is reported."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from grainchain import Feature
from grainchain._generated.providers import BUILTIN_PROVIDERS
from spec.validate import load_spec, validate_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_spec()


def test_packaged_spec_is_valid(spec: dict[str, Any]) -> None:
    assert validate_spec(spec) == []


def test_spec_names_every_operation_of_the_api_document(spec: dict[str, Any]) -> None:
    documented = {
        "execute",
        "upload_file",
        "download_file",
        "list_files",
        "create_snapshot",
        "restore_snapshot",
    }
    documented |= {"terminate", "wake_up"}
    assert documented <= set(spec["operations"])
    assert {"create", "close", "connect", "list_sandboxes"} <= set(spec["lifecycle"])


def test_six_builtin_providers_declare_every_feature(spec: dict[str, Any]) -> None:
    assert set(spec["providers"]) == {"local", "docker", "e2b", "morph", "daytona", "modal"}
    for info in BUILTIN_PROVIDERS.values():
        assert set(info.features) == set(Feature)


def _broken(spec: dict[str, Any], edit: Any) -> list[str]:
    changed = copy.deepcopy(spec)
    edit(changed)
    return validate_spec(changed)


def test_unknown_feature_in_an_operation_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(
        spec, lambda s: s["operations"]["execute"]["requires"].append({"feature": "warp.drive"})
    )
    assert problems == ["operations/execute/requires: unknown feature 'warp.drive'"]


def test_provider_missing_a_feature_level_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["providers"]["local"]["features"].pop("exec"))
    assert problems == ["providers/local/features: no level declared for 'exec'"]


def test_condition_on_a_missing_parameter_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(
        spec, lambda s: s["operations"]["execute"]["requires"].append({"feature": "exec", "when_set": "nope"})
    )
    assert problems == ["operations/execute/requires: when_set names no parameter: 'nope'"]


def test_schema_violation_names_the_place(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["providers"]["local"]["features"].update({"exec": "sometimes"}))
    assert len(problems) == 1
    assert problems[0].startswith("providers/local/features/exec: 'sometimes' is not one of")


def test_config_requirement_must_name_a_config_field(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["config_requirements"].update({"gpu": "limits.cpu"}))
    assert problems == ["config_requirements/gpu: not a SandboxConfig field"]


# -- python -m spec: the validator's command line -----------------------------------------------------------


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spec", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_python_m_spec_passes_on_the_spec(spec: dict[str, Any]) -> None:
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"spec OK: {len(spec['features'])} features, {len(spec['operations'])} operations, "
        f"{len(spec['providers'])} providers\n"
    )


def test_python_m_spec_lists_the_problems_of_a_broken_spec(spec: dict[str, Any], tmp_path: Path) -> None:
    spec = copy.deepcopy(spec)
    del spec["providers"]["local"]["features"]["ports"]
    spec["operations"]["execute"]["requires"].append({"feature": "teleport"})
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    result = _check(str(broken))
    assert result.returncode == 1
    assert f"{broken}: providers/local/features: no level declared for 'ports'" in result.stdout
    assert f"{broken}: operations/execute/requires: unknown feature 'teleport'" in result.stdout
    assert result.stderr == f"{broken}: 2 problems found\n"


def test_python_m_spec_reports_invalid_yaml_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("features: [exec,\n")
    result = _check(str(broken))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "invalid YAML" in result.stderr
