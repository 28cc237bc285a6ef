"""The promises of the spec, each with an id, and which conformance tests check them.

The spec is the list: every convention, feature summary, operation summary, documented parameter, `raises`
entry, SandboxConfig field, described model field and lifecycle entry is a promise. A test claims the
promises it checks with `@pytest.mark.promises(...)` (a state machine rule with `@checks(...)`);
`uncovered()` names every promise no test claims, and `test_coverage.py` fails on any.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grainchain.adapters import INFORMATIONAL_FEATURES, load_spec

SUITE_DIR = Path(__file__).parent
ATTRIBUTE = "grainchain_promises"

# Promises no provider-neutral test can check, each with the reason (shown in the coverage report). The
# spec's informational features are among them: no operation or SandboxConfig field gates them (the spec says
# why, e.g. the provider_config key that sets one), so the suite cannot ask for one without knowing the
# provider. test_coverage.py checks that every other feature is gated and probed.
NOT_TESTABLE: dict[str, str] = {
    "config:provider_config": "provider-specific by definition: each provider's own tests check its keys",
    **{
        f"feature:{feature.value}": f"informational: {reason}"
        for feature, reason in INFORMATIONAL_FEATURES.items()
    },
}

# Models whose described fields are promises (the results the operations return).
RESULT_MODELS = ("ExecutionResult", "FileInfo", "SnapshotInfo", "SandboxInfo")


@dataclass(frozen=True)
class Promise:
    id: str  # "<kind>:<where>", e.g. "raises:download_file.FileNotFoundInSandboxError"
    text: str  # the spec's words
    features: tuple[str, ...]  # the features it is about; () for the general ones


def requirement_features(requirement: dict[str, Any]) -> list[str]:
    """The features of one `requires` entry of the spec: its `feature`, or those of its `any_of`."""
    return list(requirement["any_of"]) if "any_of" in requirement else [requirement["feature"]]


def is_unconditional(requirement: dict[str, Any]) -> bool:
    return "when_set" not in requirement and "when_equals" not in requirement


@functools.cache
def spec_promises() -> dict[str, Promise]:
    """Every promise of the packaged spec, by id."""
    spec = load_spec()
    found: list[Promise] = []
    for name, text in spec.get("conventions", {}).items():
        found.append(Promise(f"convention:{name}", text, ()))
    for name, feature in spec["features"].items():
        found.append(Promise(f"feature:{name}", feature["summary"], (name,)))
    op_features: dict[str, tuple[str, ...]] = {}
    for name, op in spec["operations"].items():
        always = [f for r in op["requires"] if is_unconditional(r) for f in requirement_features(r)]
        every = [f for r in op["requires"] for f in requirement_features(r)]
        features = tuple(dict.fromkeys(always or every))
        op_features[name] = features
        found.append(Promise(f"op:{name}", op["summary"], features))
        for param, info in op["params"].items():
            if "doc" in info:
                found.append(Promise(f"param:{name}.{param}", info["doc"], features))
        for error in op.get("raises", []):
            found.append(Promise(f"raises:{name}.{error}", f"{name} raises {error}", features))
    needs = spec["config_requirements"]
    for field, info in spec["models"]["SandboxConfig"]["properties"].items():
        features = (needs[field],) if field in needs else ()
        found.append(Promise(f"config:{field}", info.get("description", field), features))
    for model in RESULT_MODELS:
        returned_by = [op for op, info in spec["operations"].items() if model in info["returns"]]
        features = tuple(dict.fromkeys(f for op in returned_by for f in op_features[op]))
        if model == "SandboxInfo":
            features = ("lifecycle.reconnect",)
        for field, info in spec["models"][model]["properties"].items():
            if "description" in info:
                found.append(Promise(f"field:{model}.{field}", info["description"], features))
    for name, entry in spec["lifecycle"].items():
        found.append(Promise(f"lifecycle:{name}", entry["summary"], tuple(entry["requires"])))
    return {p.id: p for p in found}


# -- claims -------------------------------------------------------------------------------------------

FuncT = TypeVar("FuncT", bound=Callable[..., Any])


def checks(*ids: str) -> Callable[[FuncT], FuncT]:
    """Claim promises for a state machine rule (tests use `@pytest.mark.promises(...)`)."""

    def mark(func: FuncT) -> FuncT:
        setattr(func, ATTRIBUTE, (*getattr(func, ATTRIBUTE, ()), *ids))
        return func

    return mark


def _claims_in(path: Path) -> Iterator[tuple[str, str]]:
    """(promise id, test name) for every claim written in a suite module, read from its source: neither
    importing the module nor collecting it is needed, so the check runs without a provider."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            func = decorator.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called not in ("promises", "checks"):
                continue
            for arg in decorator.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value, f"{path.stem}::{node.name}"


@functools.cache
def claims() -> dict[str, tuple[str, ...]]:
    """Promise id -> the suite's tests (module::function) that claim it."""
    found: dict[str, list[str]] = {}
    for path in sorted(SUITE_DIR.glob("test_*.py")):
        for promise, test in _claims_in(path):
            found.setdefault(promise, []).append(test)
    return {k: tuple(dict.fromkeys(v)) for k, v in found.items()}


def uncovered() -> list[str]:
    """Promises of the spec no test claims (and that are not NOT_TESTABLE)."""
    claimed = claims()
    return sorted(p for p in spec_promises() if p not in claimed and p not in NOT_TESTABLE)


def unknown_claims() -> dict[str, tuple[str, ...]]:
    """Claims naming no promise of the spec (a typo, or a promise the spec dropped)."""
    known = spec_promises()
    return {p: tests for p, tests in claims().items() if p not in known}


def coverage_by_feature() -> dict[str, tuple[int, int]]:
    """Feature (or "(general)") -> (promises claimed or not testable, promises)."""
    claimed = claims()
    table: dict[str, list[int]] = {}
    for promise in spec_promises().values():
        for feature in promise.features or ("(general)",):
            row = table.setdefault(feature, [0, 0])
            row[1] += 1
            row[0] += promise.id in claimed or promise.id in NOT_TESTABLE
    return {feature: (done, total) for feature, (done, total) in table.items()}
