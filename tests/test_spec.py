"""The capability spec validates, and each kind of mistake in it is reported."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from grainchain import CapabilityError, Feature
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._generated.providers import BUILTIN_PROVIDERS
from spec.validate import SPEC_PATH, load_spec, validate_spec

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


# -- any_of requirements ------------------------------------------------------------------------------------


def test_snapshot_operations_need_either_snapshot_kind(spec: dict[str, Any]) -> None:
    for name in ("restore_snapshot", "list_snapshots", "delete_snapshot"):
        assert spec["operations"][name]["requires"] == [
            {"any_of": ["snapshot.filesystem", "snapshot.memory"]}
        ]


def test_any_of_naming_an_unknown_feature_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(
        spec,
        lambda s: s["operations"]["list_snapshots"]["requires"].append({"any_of": ["files", "warp.drive"]}),
    )
    assert problems == ["operations/list_snapshots/requires: unknown feature 'warp.drive' in any_of"]


@pytest.mark.parametrize(
    "requirement",
    [
        pytest.param({"any_of": ["files"]}, id="one-alternative"),
        pytest.param({"any_of": ["files", "files"]}, id="repeated"),
        pytest.param({"feature": "files", "any_of": ["files", "exec"]}, id="both-forms"),
        pytest.param({"when_set": "kind"}, id="neither-form"),
    ],
)
def test_malformed_any_of_is_a_schema_error(spec: dict[str, Any], requirement: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["operations"]["create_snapshot"]["requires"].append(requirement))
    assert len(problems) == 1
    assert problems[0].startswith("operations/create_snapshot/requires/2")


def test_any_of_is_rendered_as_one_gate_of_alternatives() -> None:
    facade = (ROOT / "grainchain/_generated/_async/sandbox.py").read_text()
    body = facade.split("async def list_snapshots(")[1].split("async def ")[0]
    assert "(Feature.SNAPSHOT_FILESYSTEM, Feature.SNAPSHOT_MEMORY)" in body
    matrix = (ROOT / "docs/feature-matrix.md").read_text()
    assert "| `list_snapshots` | `snapshot.filesystem` or `snapshot.memory` |" in matrix


def _arguments(spec: dict[str, Any], operation: str) -> dict[str, Any]:
    sample = {"str": "x", "int": 8080, "str | bytes": b"x", "LocalPath": "local-dir"}
    params = spec["operations"][operation]["params"]
    return {name: sample[p["type"]] for name, p in params.items() if "default" not in p}


def test_adapter_defaults_name_the_feature_the_gate_names(spec: dict[str, Any]) -> None:
    """An adapter method left unimplemented raises the CapabilityError the facade's gate would: the first
    feature of the operation's first requirement that applies to a call with the defaults (the first
    alternative of an `any_of`)."""

    def applies(req: dict[str, Any], params: dict[str, Any]) -> bool:
        if "when_set" in req:
            return False
        return all(params[p].get("default") == v for p, v in req.get("when_equals", {}).items())

    adapter = object.__new__(type("Bare", (AsyncSandboxAdapter,), {"provider_name": "bare"}))
    for name, op in spec["operations"].items():
        first = next(r for r in op["requires"] if applies(r, op["params"]))
        with pytest.raises(CapabilityError) as info:
            asyncio.run(getattr(adapter, name)(**_arguments(spec, name)))
        assert (info.value.feature, info.value.operation) == (
            (first.get("any_of") or [first.get("feature")])[0],
            name,
        )
        if "any_of" in first:
            assert info.value.hint == f"needs any one of {', '.join(first['any_of'])}"


# -- every feature gated or informational ---------------------------------------------------------------------


def test_image_dockerfile_and_network_policy_are_informational(spec: dict[str, Any]) -> None:
    informational = {name for name, f in spec["features"].items() if "informational" in f}
    assert informational == {"image.dockerfile", "network.policy"}
    assert "provider_config key" in spec["features"]["network.policy"]["informational"]


def test_ungated_feature_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["features"]["network.policy"].pop("informational"))
    assert problems == [
        "features/network.policy: no operation, lifecycle entry or SandboxConfig field (config_requirements) "
        "needs it; gate it, or declare it `informational` with the reason"
    ]


def test_feature_gated_and_informational_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["features"]["ports"].update({"informational": "set elsewhere"}))
    assert problems == [
        "features/ports: declared informational but gated by operations/port_address, "
        "config_requirements/ports; drop `informational` or the gate"
    ]


def test_informational_needs_a_reason(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["features"]["network.policy"].update({"informational": ""}))
    assert len(problems) == 1
    assert problems[0].startswith("features/network.policy/informational:")


# -- raises: names of grainchain/errors.py, read as source ---------------------------------------------------------


def test_unknown_raises_name_is_reported(spec: dict[str, Any]) -> None:
    problems = _broken(spec, lambda s: s["operations"]["download_file"]["raises"].append("FileMissingError"))
    assert problems == [
        "operations/download_file/raises: 'FileMissingError' is not a class of grainchain/errors.py"
    ]


def test_raises_are_checked_against_the_error_module_given(spec: dict[str, Any], tmp_path: Path) -> None:
    errors = tmp_path / "errors.py"
    errors.write_text("class SnapshotNotFoundError(Exception): ...\n")
    problems = validate_spec(spec, errors_path=errors)
    assert f"operations/execute/raises: 'CommandTimeoutError' is not a class of {errors}" in problems
    assert not any("SnapshotNotFoundError" in p for p in problems)
    errors.write_text("class Broken(:\n")
    problems = validate_spec(spec, errors_path=errors)
    assert problems[0].startswith(f"raises: cannot read the error classes of {errors}: ")


def test_the_validator_reads_the_error_module_without_importing_grainchain() -> None:
    code = (
        "import sys\n"
        "from spec.validate import load_spec, validate_spec\n"
        "assert validate_spec(load_spec()) == []\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grainchain'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# -- file names in the spec ------------------------------------------------------------------------------------

_REPO_PATH = re.compile(
    r"(?<![\w.:/-])(?:grainchain|spec|docs|codegen|conformance|tests|benchmarks)/(?:[\w./-]*[\w/])?"
)


def test_every_repo_path_the_spec_names_exists() -> None:
    """File names in spec/grainchain.yaml, comments included, name files that are there (no stale ones)."""
    named = sorted(set(_REPO_PATH.findall(SPEC_PATH.read_text(encoding="utf-8"))))
    assert {"grainchain/_async/base.py", "grainchain/errors.py", "docs/feature-matrix.md"} <= set(named)
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"spec/grainchain.yaml names files that do not exist: {missing}"


def test_the_path_pattern_finds_stale_names() -> None:
    text = "# see grainchain/_async/gone.py, docs/old.md and spec/; not https://grainchain.dev/spec/x.json"
    assert _REPO_PATH.findall(text) == ["grainchain/_async/gone.py", "docs/old.md", "spec/"]


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
