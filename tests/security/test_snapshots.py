"""Attacks on the local provider's filesystem snapshots: a symlink swap racing create_snapshot, so that
the snapshot copies a host directory into the sandbox."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _attacks import CANARY_TOKEN, Canary, isolated_sandbox, prepare_swap, swapping

from grainchain import SandboxConfig
from grainchain.errors import GrainchainError

SNAPSHOTS = 24
SECONDS = 4.0

# mode -> (config, the swapper's pause between swaps: tuned so that a copy which follows symlinks sees one
# state of `d` long enough to copy the host's files; on today's main most snapshots of either mode leak)
MODES = {
    "layers": (None, 0.0001),
    "copy": (SandboxConfig(provider_config={"snapshots": "copy"}), 0.001),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_snapshot_symlink_swap_race(mode: str, tmp_path: Path) -> None:
    """Takes filesystem snapshots while a process in the sandbox keeps exchanging a directory `d` with a
    symlink to a host canary directory, then restores each snapshot and greps the workspace for the canary's
    content. A vulnerable grainchain follows the swapped-in symlink while copying, so the restored sandbox
    holds the host directory's files (or it fails with an untyped error)."""
    cfg, pause = MODES[mode]
    canary = Canary(tmp_path / "canary", only=False)  # a copy succeeds only if every name exists in both
    taken: list[str] = []
    untyped: list[str] = []
    typed = 0
    leaked: list[str] = []
    with isolated_sandbox(cfg) as sandbox:
        prepare_swap(sandbox, canary.root)
        with swapping(sandbox, pause):
            started = time.monotonic()
            while len(taken) + typed + len(untyped) < SNAPSHOTS and time.monotonic() - started < SECONDS:
                try:
                    taken.append(sandbox.create_snapshot())
                except GrainchainError:
                    typed += 1
                except Exception as exc:  # an untyped error is a finding
                    untyped.append(repr(exc)[:200])
        for snapshot_id in taken:
            sandbox.restore_snapshot(snapshot_id)
            found = sandbox.execute(f"grep -rl {CANARY_TOKEN} . || true").stdout.split()
            if found:
                leaked.append(f"{snapshot_id}: {found}")
    damage = canary.damage()
    assert len(leaked) + len(untyped) + len(damage) == 0, (
        f"{mode} snapshots raced by a symlink swap: {len(leaked)} of {len(taken)} snapshots hold the host "
        f"canary's files ({typed} typed errors, {len(untyped)} untyped); e.g. {leaked[:2]}; "
        f"untyped e.g. {untyped[:1]}; host canary changed: {damage}"
    )
