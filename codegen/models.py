"""spec `models` → grainchain/_generated/models.py, through datamodel-code-generator (settings in pyproject)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from codegen.common import ROOT, header


def render_models(spec: dict[str, Any]) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "GrainchainModels",
        "$defs": spec["models"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "models.schema.json")
        target = Path(tmp, "models.py")
        source.write_text(json.dumps(schema, indent=2))
        subprocess.run(
            [sys.executable, "-m", "datamodel_code_generator", "--input", source, "--output", target],
            cwd=ROOT,  # picks up [tool.datamodel-codegen] from pyproject.toml
            check=True,
        )
        body = target.read_text()
    # The schema's root is only a holder for $defs; drop the empty model generated for it.
    body = re.sub(r"\n\nclass GrainchainModels\(RootModel\[Any\]\):\n(    .*\n)+", "\n", body)
    body = body.replace("RootModel, ", "").replace(", RootModel", "")
    return header("spec/grainchain.yaml (models)", tool="datamodel-code-generator") + body
