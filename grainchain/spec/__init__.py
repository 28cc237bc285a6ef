"""Load and validate the capability spec (grainchain.yaml) shipped with the package.

The runtime never reads the YAML: codegen turns it into grainchain/_generated/. This module serves codegen,
`grainchain spec check` and the conformance suite.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_FILE = "grainchain.yaml"
SCHEMA_FILE = "grainchain.schema.json"


def default_spec_path() -> Path:
    return Path(str(resources.files(__name__).joinpath(SPEC_FILE)))


def load_spec(path: Path | None = None) -> dict[str, Any]:
    """Read a spec file (default: the packaged one) without validating it."""
    text = (path or default_spec_path()).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path or SPEC_FILE}: the spec must be a mapping at the top level")
    return data


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files(__name__).joinpath(SCHEMA_FILE).read_text("utf-8"))
    return schema


def validate_spec(spec: dict[str, Any]) -> list[str]:
    """Every problem found, as one readable line each; an empty list means the spec is valid."""
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        return problems  # the cross-checks below assume the shape is right
    features = set(spec["features"])
    config_fields = set(spec["models"]["SandboxConfig"]["properties"])
    for field, feature in spec["config_requirements"].items():
        if field not in config_fields:
            problems.append(f"config_requirements/{field}: not a SandboxConfig field")
        if feature not in features:
            problems.append(f"config_requirements/{field}: unknown feature {feature!r}")
    for name, op in spec["operations"].items():
        for req in op["requires"]:
            where = f"operations/{name}/requires"
            if req["feature"] not in features:
                problems.append(f"{where}: unknown feature {req['feature']!r}")
            if "when_set" in req and req["when_set"] not in op["params"]:
                problems.append(f"{where}: when_set names no parameter: {req['when_set']!r}")
            for param in req.get("when_equals", {}):
                if param not in op["params"]:
                    problems.append(f"{where}: when_equals names no parameter: {param!r}")
    for name, entry in spec["lifecycle"].items():
        for feature in entry["requires"]:
            if feature not in features:
                problems.append(f"lifecycle/{name}/requires: unknown feature {feature!r}")
    for name, provider in spec["providers"].items():
        declared = set(provider["features"])
        for missing in sorted(features - declared):
            problems.append(f"providers/{name}/features: no level declared for {missing!r}")
        for unknown in sorted(declared - features):
            problems.append(f"providers/{name}/features: unknown feature {unknown!r}")
    return problems
