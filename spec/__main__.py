"""`python -m spec [FILE]`: validate a spec file (default: spec/grainchain.yaml) against its JSON Schema and
cross-check its references. Exit 0 when valid, 1 with one line per problem otherwise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from spec.validate import SPEC_PATH, load_spec, validate_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=SPEC_PATH, help="spec file to check")
    path: Path = parser.parse_args(argv).file
    try:
        spec = load_spec(path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        print(f"{where}: invalid YAML: {exc.problem or exc.context}", file=sys.stderr)
        return 1
    except (yaml.YAMLError, ValueError, OSError) as exc:
        message = str(exc)
        print(message if str(path) in message else f"{path}: {message}", file=sys.stderr)
        return 1
    problems = validate_spec(spec)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        print(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return 1
    counts = (len(spec[key]) for key in ("features", "operations", "providers"))
    print("spec OK: {} features, {} operations, {} providers".format(*counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
