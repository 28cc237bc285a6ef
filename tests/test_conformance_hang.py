"""The conformance suite's hang guard: a test stuck in a provider call fails after --grainchain-hang-timeout
with the operation named, on either client, instead of hanging the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_conformance_teeth import UNISOLATED, Liar, install

from grainchain.settings import Settings
from grainchain.sync import Sandbox

# blocks the thread the call runs in, as a stuck SDK call does (on the async client: the event loop)
HANGS = Liar(
    "hangs_in_execute",
    "execute of a command mentioning 'sleep 0.6' never returns",
    """
    async def execute(self, **kwargs):
        if "sleep 0.6" in kwargs["command"]:
            time.sleep(3600)
        return await super().execute(**kwargs)
    """,
    imports="import time",
)


@pytest.mark.slow
@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_hung_operation_is_named(tmp_path: Path, client: str) -> None:
    liar = HANGS
    install(tmp_path, liar)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GRAINCHAIN_STATE_DIR": str(tmp_path / "state")}
    env.pop("PYTEST_ADDOPTS", None)
    started = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs"),
            *("grainchain_conformance.test_exec", "-k", "test_result_fields_say_what_ran"),
            *("--grainchain-provider", liar.name, "--grainchain-client", client),
            *("--grainchain-config", UNISOLATED, "--grainchain-hang-timeout", "3"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert time.monotonic() - started < 60, "the guard did not cut the hang short"
    assert "ConformanceHang: hung: test_result_fields_say_what_ran" in output, output
    assert f"in flight: {client} sandbox.execute(" in output, output
    assert "sleep 0.6" in output, output
    # a hang on the async client leaves its sandbox (the loop is blocked, closing would hang): clean up
    settings = Settings(state_dir=tmp_path / "state")
    left = Sandbox.list_sandboxes("local", settings=settings)
    for info in left:
        Sandbox.connect(info.sandbox_id, "local", settings=settings).close()
    if client == "sync":
        assert not left, "the sync client closes the hung test's sandbox"
