"""Load and validate the capability spec (spec/grainchain.yaml): its JSON Schema, then cross-checks.

Imports nothing from grainchain, so that codegen can repair a broken generated file: the error names of
`raises` are checked against the classes of grainchain/errors.py read as source (ast), never imported. The
package never reads the YAML: codegen turns it into grainchain/_generated/ (also spec.json, for the
conformance suite and `grainchain spec show`). `python -m spec [FILE]` checks a spec file.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
SPEC_PATH = HERE / "grainchain.yaml"
SCHEMA_PATH = HERE / "grainchain.schema.json"
ROOT = HERE.parent
ERRORS_PATH = ROOT / "grainchain" / "errors.py"


def load_spec(path: Path | None = None) -> dict[str, Any]:
    """Read a spec file (default: spec/grainchain.yaml) without validating it."""
    text = (path or SPEC_PATH).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path or SPEC_PATH}: the spec must be a mapping at the top level")
    return data


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return schema


def requirement_features(requirement: dict[str, Any]) -> list[str]:
    """The features one `requires` entry names: its `feature`, or every feature of its `any_of`."""
    return list(requirement["any_of"]) if "any_of" in requirement else [requirement["feature"]]


def error_classes(path: Path = ERRORS_PATH) -> set[str]:
    """Names of the classes defined at the top level of the error module, read by ast (never imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def gated_features(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Feature -> what gates it ("operations/NAME", "lifecycle/NAME", "config_requirements/FIELD")."""
    gates: dict[str, list[str]] = {}
    for name, op in spec["operations"].items():
        for req in op["requires"]:
            for feature in requirement_features(req):
                gates.setdefault(feature, []).append(f"operations/{name}")
    for name, entry in spec["lifecycle"].items():
        for feature in entry["requires"]:
            gates.setdefault(feature, []).append(f"lifecycle/{name}")
    for field, feature in spec["config_requirements"].items():
        gates.setdefault(feature, []).append(f"config_requirements/{field}")
    return {feature: list(dict.fromkeys(where)) for feature, where in gates.items()}


def validate_spec(spec: dict[str, Any], *, errors_path: Path = ERRORS_PATH) -> list[str]:
    """Every problem found, as one readable line each; an empty list means the spec is valid.

    `errors_path` is the module whose classes `raises` may name (grainchain/errors.py beside spec/)."""
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
    shown_errors = errors_path.relative_to(ROOT) if errors_path.is_relative_to(ROOT) else errors_path
    try:
        errors: set[str] | None = error_classes(errors_path)
    except (OSError, SyntaxError, ValueError) as exc:
        errors = None
        problems.append(f"raises: cannot read the error classes of {shown_errors}: {exc}")
    for name, op in spec["operations"].items():
        for req in op["requires"]:
            where = f"operations/{name}/requires"
            within = " in any_of" if "any_of" in req else ""
            for feature in requirement_features(req):
                if feature not in features:
                    problems.append(f"{where}: unknown feature {feature!r}{within}")
            if "when_set" in req and req["when_set"] not in op["params"]:
                problems.append(f"{where}: when_set names no parameter: {req['when_set']!r}")
            for param in req.get("when_equals", {}):
                if param not in op["params"]:
                    problems.append(f"{where}: when_equals names no parameter: {param!r}")
        for error in op.get("raises", []):
            if errors is not None and error not in errors:
                problems.append(f"operations/{name}/raises: {error!r} is not a class of {shown_errors}")
    for name, entry in spec["lifecycle"].items():
        for feature in entry["requires"]:
            if feature not in features:
                problems.append(f"lifecycle/{name}/requires: unknown feature {feature!r}")
    gates = gated_features(spec)
    for name, entry in spec["features"].items():
        if "informational" in entry and name in gates:
            problems.append(
                f"features/{name}: declared informational but gated by {', '.join(gates[name])}; "
                "drop `informational` or the gate"
            )
        elif "informational" not in entry and name not in gates:
            problems.append(
                f"features/{name}: no operation, lifecycle entry or SandboxConfig field (config_requirements) "
                "needs it; gate it, or declare it `informational` with the reason"
            )
    for name, provider in spec["providers"].items():
        declared = set(provider["features"])
        for missing in sorted(features - declared):
            problems.append(f"providers/{name}/features: no level declared for {missing!r}")
        for unknown in sorted(declared - features):
            problems.append(f"providers/{name}/features: unknown feature {unknown!r}")
    return problems
