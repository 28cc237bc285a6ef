"""Beyond the issue: files the sandbox's root creates must not become usable by other users of the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from _attacks import isolated_sandbox, run


def test_snapshot_does_not_publish_setuid_root_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox (root inside) makes /workspace world-readable and plants a setuid-root copy of `id`, then
    a snapshot is taken, with the state dir in a world-traversable place (e.g. /var/lib/grainchain). A
    vulnerable grainchain stores the layer with the workspace's mode (0755) under world-traversable
    directories, so any host user runs the sandbox's binary as root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.fail("this attack needs root and setpriv (util-linux)")
    scratch = Path(tempfile.mkdtemp(prefix="grainchain-redteam-"))
    try:
        scratch.chmod(0o755)
        state = scratch / "state"
        monkeypatch.setenv("GRAINCHAIN_STATE_DIR", str(state))
        with isolated_sandbox() as sandbox:
            run(sandbox, "chmod 755 /workspace && cp /usr/bin/id ./suid-id && chmod 4755 ./suid-id")
            snapshot_id = sandbox.create_snapshot()
            exposed = []
            for path in state.rglob("suid-id"):
                ran = subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", str(path)],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                if "euid=0" in ran.stdout:
                    exposed.append(f"{path.relative_to(state)}: {ran.stdout.strip()}")
            sandbox.delete_snapshot(snapshot_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert not exposed, f"user nobody runs the sandbox's setuid binary as root from the state dir: {exposed}"
