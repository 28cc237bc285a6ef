"""Renderers from the spec: Feature enum and tables, built-in provider table, async facade, feature matrix."""

from __future__ import annotations

import json
from typing import Any

from codegen.common import header
from spec.validate import requirement_features

SPEC = "spec/grainchain.yaml"


def feature_member(name: str) -> str:
    return name.replace(".", "_").upper()


def render_features(spec: dict[str, Any]) -> str:
    lines = [
        header(SPEC),
        '"""Features of the spec and what needs them."""',
        "",
        "from __future__ import annotations",
        "",
        "from enum import StrEnum",
        "from typing import Final",
        "",
        "",
        "class Feature(StrEnum):",
        '    """A capability a provider may support (see docs/feature-matrix.md)."""',
        "",
    ]
    for name, feature in spec["features"].items():
        lines += [f"    {feature_member(name)} = {name!r}", f'    """{feature["summary"]}."""', ""]
    lines += ["", "FEATURE_SUMMARIES: Final[dict[Feature, str]] = {"]
    lines += [f"    Feature.{feature_member(n)}: {f['summary']!r}," for n, f in spec["features"].items()]
    lines += ["}", "", "# A SandboxConfig field that is set needs this feature.", ""]
    lines += ["CONFIG_REQUIREMENTS: Final[dict[str, Feature]] = {"]
    lines += [
        f"    {field!r}: Feature.{feature_member(f)}," for field, f in spec["config_requirements"].items()
    ]
    lines += ["}", "", "# Features no operation or SandboxConfig field gates, each with the reason.", ""]
    lines += ["INFORMATIONAL_FEATURES: Final[dict[Feature, str]] = {"]
    lines += [
        f"    Feature.{feature_member(n)}: {' '.join(f['informational'].split())!r},"
        for n, f in spec["features"].items()
        if "informational" in f
    ]
    lines += [
        "}",
        "",
        "# Every feature an operation may need (some for certain arguments, one of an any_of).",
        "",
    ]
    lines += ["OPERATION_FEATURES: Final[dict[str, tuple[Feature, ...]]] = {"]
    for name, op in {**spec["operations"], **spec["lifecycle"]}.items():
        needed = [
            f for r in op["requires"] for f in (requirement_features(r) if isinstance(r, dict) else [r])
        ]
        unique = list(dict.fromkeys(needed))
        members = "".join(f"Feature.{feature_member(f)}, " for f in unique)
        lines.append(f"    {name!r}: ({members}),")
    lines += ["}", ""]
    return "\n".join(lines)


def render_providers(spec: dict[str, Any]) -> str:
    lines = [
        header(SPEC),
        '"""The built-in providers as the spec declares them."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "from grainchain._generated.features import Feature",
        "from grainchain._generated.models import SupportLevel",
        "from grainchain._provider_info import ProviderInfo",
        "",
        "BUILTIN_PROVIDERS: Final[dict[str, ProviderInfo]] = {",
    ]
    for name, provider in spec["providers"].items():
        available = provider["status"] == "available"
        cls = f"{name.capitalize()}Adapter"
        async_path = f"grainchain.providers.{name}._async.adapter:Async{cls}" if available else None
        sync_path = f"grainchain.providers.{name}._sync.adapter:{cls}" if available else None
        config_path = f"grainchain.providers.{name}.config:{name.capitalize()}Config"
        lines += [
            f"    {name!r}: ProviderInfo(",
            f"        name={name!r},",
            f"        summary={provider['summary']!r},",
            f"        status={provider['status']!r},",
            f"        async_adapter={async_path!r},",
            f"        sync_adapter={sync_path!r},",
            f"        config_model={config_path!r},",
            f"        extra={provider['extra']!r},",
            f"        sdk_module={provider['sdk_module']!r},",
            f"        credentials_env={tuple(provider['credentials_env'])!r},",
            "        features={",
        ]
        lines += [
            f"            Feature.{feature_member(f)}: SupportLevel.{level},"
            for f, level in provider["features"].items()
        ]
        lines += ["        },", "    ),"]
    lines += ["}", ""]
    return "\n".join(lines)


# the spec's check names (spec/grainchain.schema.json) and their functions in grainchain/_checks.py
_CHECK_FUNCTIONS = {
    name: f"check_{name}"
    for name in (
        "non_empty",
        "optional_non_empty",
        "port",
        "command",
        "path",
        "optional_path",
        "positive",
        "callback",
        "content",
        "env_names",
        "write_mode",
        "if_running",
        "optional_content",
        "flag",
        "local_path",
    )
}


def _used_checks(spec: dict[str, Any]) -> list[str]:
    used = {
        _CHECK_FUNCTIONS[check]
        for op in spec["operations"].values()
        for param in op["params"].values()
        for check in param.get("check", [])
    }
    return sorted(used)


def _default(value: Any) -> str:
    return "None" if value is None else repr(value)


def _param_default(param: dict[str, Any]) -> str:
    if "default" not in param:
        return ""
    value = param["default"]
    if param["type"] == "SnapshotKind":
        return f" = SnapshotKind.{value}"
    return f" = {_default(value)}"


def _requirement_expr(req: dict[str, Any]) -> str:
    """`Feature.X`, or for `any_of` a tuple of them: the gate passes when the provider supports one."""
    members = [f"Feature.{feature_member(f)}" for f in requirement_features(req)]
    return f"({', '.join(members)})" if "any_of" in req else members[0]


def _requirement_text(req: dict[str, Any], quote: str = "") -> str:
    return " or ".join(f"{quote}{f}{quote}" for f in requirement_features(req))


def _requirement_lines(op_name: str, op: dict[str, Any]) -> list[str]:
    always = [r for r in op["requires"] if "when_set" not in r and "when_equals" not in r]
    listed = f"[{', '.join(_requirement_expr(r) for r in always)}]"
    if any("any_of" in r for r in op["requires"]):
        lines = [f"        features: list[Feature | tuple[Feature, ...]] = {listed}"]
    else:
        lines = [f"        features = {listed}"]
    for req in op["requires"]:
        member = _requirement_expr(req)
        if "when_set" in req:
            lines += [f"        if {req['when_set']} is not None:", f"            features.append({member})"]
        elif "when_equals" in req:
            ((param, value),) = req["when_equals"].items()
            kind = op["params"][param]["type"]
            expected = f"{kind}.{value}" if kind == "SnapshotKind" else repr(value)
            same = "is" if isinstance(value, bool) else "=="  # a flag (checked to be a bool): no E712
            lines += [f"        if {param} {same} {expected}:", f"            features.append({member})"]
    lines.append(f"        adapter = self._gate({op_name!r}, *features)")
    return lines


def _docstring(op: dict[str, Any]) -> list[str]:
    lines = [f'        """{op["summary"]}', ""]
    documented = [(n, p) for n, p in op["params"].items() if p.get("doc")]
    if documented:
        lines.append("        Args:")
        lines += [f"            {n}: {p['doc']}" for n, p in documented]
        lines.append("")
    needs = []
    for req in op["requires"]:
        cond = ""
        if "when_set" in req:
            cond = f" when {req['when_set']} is set"
        elif "when_equals" in req:
            ((param, value),) = req["when_equals"].items()
            cond = f" when {param}={value}"
        needs.append(f"{_requirement_text(req)}{cond}")
    first = [requirement_features(r)[0] for r in op["requires"] if "any_of" in r]
    naming = f" naming {', '.join(first)}" if first else ""
    lines.append(f"        Needs: {'; '.join(needs)} (else CapabilityError{naming}).")
    if op.get("raises"):
        lines.append(f"        Raises: {', '.join(op['raises'])}.")
    lines.append('        """')
    return lines


def render_facade(spec: dict[str, Any]) -> str:
    lines = [
        header(SPEC, tool="codegen/render.py"),
        '"""The sandbox facade: one method per operation of the spec (checks, capability gate, adapter call)."""',
        "",
        "from __future__ import annotations",
        "",
        "from grainchain._async.base import AsyncSandboxBase",
        "from grainchain._async.process import AsyncProcessHandle",
        "from grainchain._checks import (",
        "    as_enum,",
        *(f"    {function}," for function in _used_checks(spec)),
        ")",
        "from grainchain._generated.features import Feature",
        "from grainchain._types import IfProcessesRunning, LocalPath, OutputCallback",
        "from grainchain.models import ExecutionResult, FileInfo, SnapshotInfo, SnapshotKind",
        "",
        "",
        "class AsyncSandbox(AsyncSandboxBase):",
        '    """A sandbox of any provider; use it as a context manager, which creates and closes it."""',
        "",
    ]
    for name, op in spec["operations"].items():
        params = "".join(
            f", {p}: {spec_p['type']}{_param_default(spec_p)}" for p, spec_p in op["params"].items()
        )
        lines.append(f"    async def {name}(self{params}) -> {op['returns']}:")
        lines += _docstring(op)
        for param, spec_p in op["params"].items():
            for check in spec_p.get("check", []):
                lines.append(f"        {_CHECK_FUNCTIONS[check]}({name!r}, {param!r}, {param})")
            if "enum" in spec["models"].get(spec_p["type"], {}):  # "memory" works as SnapshotKind.memory
                lines.append(f"        {param} = as_enum({name!r}, {param!r}, {spec_p['type']}, {param})")
        lines += _requirement_lines(name, op)
        args = ", ".join(f"{p}={p}" for p in op["params"])
        call = f"await adapter.{name}({args})"
        lines.append(f"        with self._errors({name!r}):")
        lines.append(f"            {'return ' if op['returns'] != 'None' else ''}{call}")
        lines.append("")
    return "\n".join(lines)


_LEVEL_MARK = {"native": "✅ native", "emulated": "◐ emulated", "unsupported": "❌"}


def render_matrix(spec: dict[str, Any]) -> str:
    providers = spec["providers"]
    names = list(providers)
    lines = [
        header(SPEC, comment="<!--").replace("\n", " -->\n"),
        "# Feature matrix",
        "",
        "What each provider declares in the capability spec. An unsupported feature raises `CapabilityError`",
        "before the provider is called; a provider may narrow a level at run time (e.g. Docker without CRIU),",
        "never widen it. `planned` providers have no adapter yet. An *informational* feature (ⓘ below) is",
        "gated by no operation or SandboxConfig field: it is set through the provider's `provider_config`.",
        "",
        "| Feature | " + " | ".join(f"{n} ({providers[n]['status']})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for feature, entry in spec["features"].items():
        marks = " | ".join(_LEVEL_MARK[providers[n]["features"][feature]] for n in names)
        lines.append(f"| `{feature}`{' ⓘ' if 'informational' in entry else ''} | {marks} |")
    lines += ["", "## Features", ""]
    lines += [
        f"- `{name}`: {f['summary']}."
        + (f" ⓘ Informational: {' '.join(f['informational'].split())}." if "informational" in f else "")
        for name, f in spec["features"].items()
    ]
    lines += ["", "## Conventions every provider follows", ""]
    lines += [f"- **{name}**: {text}" for name, text in spec.get("conventions", {}).items()]
    lines += ["", "## Operations and the features they need", "", "| Operation | Needs |", "|---|---|"]
    for name, op in spec["operations"].items():
        needs = []
        for req in op["requires"]:
            cond = ""
            if "when_set" in req:
                cond = f" (when `{req['when_set']}` is set)"
            elif "when_equals" in req:
                ((param, value),) = req["when_equals"].items()
                cond = f" (when `{param}={value}`)"
            needs.append(f"{_requirement_text(req, '`')}{cond}")
        lines.append(f"| `{name}` | {', '.join(needs)} |")
    for name, entry in spec["lifecycle"].items():
        lines.append(
            f"| {name}: {entry['summary']} | {', '.join(f'`{f}`' for f in entry['requires']) or '—'} |"
        )
    lines.append("")
    if any("any_of" in r for op in spec["operations"].values() for r in op["requires"]):
        lines += [
            "`A` or `B`: the operation needs any one of them; `CapabilityError` is raised only when the provider",
            "supports none, and names the first (its hint lists them all).",
            "",
        ]
    lines += [
        "SandboxConfig fields that need a feature when set: "
        + ", ".join(f"`{field}` → `{f}`" for field, f in spec["config_requirements"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def render_spec_json(spec: dict[str, Any]) -> str:
    """The whole spec as data, for what reads it at run time (the conformance suite, `grainchain spec show`)."""
    return json.dumps(spec, indent=1, sort_keys=False) + "\n"


def render_spec_module() -> str:
    return "\n".join(
        [
            header(SPEC),
            '"""The capability spec as data (spec.json beside this file), read only by those who need all of it."""',
            "",
            "from __future__ import annotations",
            "",
            "import json",
            "from importlib import resources",
            "from typing import Any",
            "",
            "",
            "def spec_json() -> str:",
            '    return resources.files(__package__).joinpath("spec.json").read_text(encoding="utf-8")',
            "",
            "",
            "def load_spec() -> dict[str, Any]:",
            "    spec: dict[str, Any] = json.loads(spec_json())",
            "    return spec",
            "",
        ]
    )
