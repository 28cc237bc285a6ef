"""Helpers of the local-provider tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (by prefix of its resolved form), in mount order."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path.resolve()))]


def run_unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make isolation="none" the default of every sandbox the test creates (through the config file's
    [sandbox] table, so that a test's own SandboxConfig still applies). For tests that look at a sandbox
    from the host: its host paths, host pids, process groups and sessions."""
    config = tmp_path / "unisolated.toml"
    config.write_text('[sandbox]\nprovider_config = {isolation = "none"}\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))


def run_as_nobody(script: str) -> Any:
    """Run a Python script as user nobody (root and setpriv needed, else the test skips) in a scratch
    state directory with no config file, and return what it printed as JSON."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a child as nobody")
    scratch = Path(tempfile.mkdtemp(prefix="grainchain-nobody-"))
    try:
        scratch.chmod(0o777)
        env = {
            **os.environ,
            "GRAINCHAIN_STATE_DIR": str(scratch / "state"),
            "GRAINCHAIN_CONFIG": str(scratch / "none.toml"),
            "HOME": str(scratch),
        }
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
            capture_output=True, text=True, cwd=scratch, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
