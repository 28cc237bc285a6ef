"""`python -m codegen` regenerates every generated file; `--check` fails on any drift instead.

Generated: everything under grainchain/_generated/ (models, features, providers, spec.json, both facades) and
every `_sync/` folder (the twin of its `_async/` sibling, through unasync), plus docs/feature-matrix.md.
A stray file in a generated directory is drift too. Reads spec/ and never imports grainchain, so it repairs
a broken generated file.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
import tempfile
from pathlib import Path

from codegen.common import ROOT, header
from codegen.models import render_models
from codegen.render import (
    SPEC,
    render_facade,
    render_features,
    render_matrix,
    render_providers,
    render_spec_json,
    render_spec_module,
)
from codegen.sync import unasync_tree
from spec.validate import load_spec, validate_spec

FACADE = "grainchain/_generated/_async/sandbox.py"
# hand-written async sources: the facade's base, every provider's folder, the test suite's providers
ASYNC_SOURCE_GLOBS = (
    "grainchain/_async/**/*.py",
    "grainchain/providers/*/_async/**/*.py",
    "tests/providers/*/_async/**/*.py",
)


def generated_dirs() -> list[Path]:
    twins = (p for pattern in ("grainchain/**/_sync", "tests/**/_sync") for p in ROOT.glob(pattern))
    return [ROOT / "grainchain/_generated", *(p for p in twins if p.is_dir())]


def generate() -> dict[str, str]:
    spec = load_spec()
    problems = validate_spec(spec)
    if problems:
        raise SystemExit("codegen: the spec is invalid:\n  " + "\n  ".join(problems))
    files = {
        "grainchain/_generated/__init__.py": header(SPEC)
        + '"""What codegen derives from the capability spec."""\n',
        "grainchain/_generated/models.py": render_models(spec),
        "grainchain/_generated/features.py": render_features(spec),
        "grainchain/_generated/providers.py": render_providers(spec),
        "grainchain/_generated/spec.py": render_spec_module(),
        "grainchain/_generated/spec.json": render_spec_json(spec),
        FACADE: render_facade(spec),
        "docs/feature-matrix.md": render_matrix(spec),
    }
    async_sources = {
        str(p.relative_to(ROOT)): p.read_text() for pattern in ASYNC_SOURCE_GLOBS for p in ROOT.glob(pattern)
    }
    files["grainchain/_generated/_async/__init__.py"] = header(SPEC)
    async_sources[FACADE] = files[FACADE]
    async_sources["grainchain/_generated/_async/__init__.py"] = ""
    files.update(unasync_tree(async_sources))
    return _format(files)


def _format(files: dict[str, str]) -> dict[str, str]:
    """ruff (project settings) sorts imports and formats, so generated code looks like the rest."""
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".codegen-") as tmp:
        for rel, text in files.items():
            path = Path(tmp, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        py = [str(Path(tmp, rel)) for rel in files if rel.endswith(".py")]
        ruff = [sys.executable, "-m", "ruff"]
        subprocess.run(
            [*ruff, "check", "--quiet", "--fix-only", "--select", "I,F401,UP", *py], cwd=ROOT, check=True
        )
        subprocess.run([*ruff, "format", "--quiet", *py], cwd=ROOT, check=True)
        return {rel: Path(tmp, rel).read_text() for rel in files}


def _on_disk() -> set[str]:
    found = set()
    for directory in generated_dirs():
        for path in directory.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found.add(str(path.relative_to(ROOT)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on drift instead of writing")
    args = parser.parse_args(argv)
    files = generate()
    stray = sorted(_on_disk() - set(files))
    drift = [
        rel for rel, text in files.items() if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != text
    ]
    if args.check:
        for rel in drift:
            old = (ROOT / rel).read_text().splitlines() if (ROOT / rel).is_file() else []
            diff = difflib.unified_diff(
                old, files[rel].splitlines(), f"{rel} (on disk)", f"{rel} (generated)", lineterm=""
            )
            print("\n".join(list(diff)[:40]))
        for rel in stray:
            print(f"stray file in a generated directory: {rel}")
        if drift or stray:
            print(
                f"codegen --check: {len(drift)} file(s) out of date, {len(stray)} stray; run `python -m codegen`"
            )
            return 1
        print(f"codegen --check: {len(files)} generated files up to date")
        return 0
    for rel in stray:
        (ROOT / rel).unlink()
    for rel in drift:
        (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / rel).write_text(files[rel])
    print(
        f"codegen: wrote {len(drift)} file(s), removed {len(stray)} stray, {len(files) - len(drift)} unchanged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
