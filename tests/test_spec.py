"""The capability spec validates, and each kind of mistake in it is reported."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from grainchain import Feature
from grainchain._generated.providers import BUILTIN_PROVIDERS
from grainchain.spec import load_spec, validate_spec


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
