"""Helpers of the local-provider tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def run_unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make isolation="none" the default of every sandbox the test creates (through the config file's
    [sandbox] table, so that a test's own SandboxConfig still applies). For tests that look at a sandbox
    from the host: its host paths, host pids, process groups and sessions."""
    config = tmp_path / "unisolated.toml"
    config.write_text('[sandbox]\nprovider_config = {isolation = "none"}\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
