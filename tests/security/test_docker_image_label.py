"""An image's labels are chosen by whoever built the image: grainchain must not trust them with host paths."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

from _attacks import BUSYBOX, require_docker

from grainchain import SandboxConfig
from grainchain.errors import GrainchainError
from grainchain.sync import Sandbox


def test_image_label_cannot_make_delete_snapshot_remove_host_dir(tmp_path: Path) -> None:
    """Builds an image labelled grainchain.snapshot.checkpoint=<host victim dir>, creates a docker sandbox
    from it, takes a filesystem snapshot and deletes it. A vulnerable grainchain reads the checkpoint
    directory from the snapshot image's label and removes the host victim directory."""
    require_docker()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("host data")
    context = tmp_path / "image"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nLABEL grainchain.snapshot.checkpoint={victim}\n")
    tag = f"grainchain-redteam/label-{uuid.uuid4().hex[:12]}:latest"
    built = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, f"docker build failed: {built.stderr}"
    snapshot_id = None
    deleted = False
    refused = ""
    try:
        with Sandbox("docker", SandboxConfig(image=tag)) as sandbox:
            try:
                snapshot_id = sandbox.create_snapshot()
                sandbox.delete_snapshot(snapshot_id)
                deleted = True
            except GrainchainError as exc:  # refusing the labelled snapshot is fine
                refused = repr(exc)
            finally:
                if snapshot_id is not None and not deleted:
                    with contextlib.suppress(GrainchainError):
                        sandbox.delete_snapshot(snapshot_id)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60, check=False)
    assert (victim / "precious").exists(), (
        f"delete_snapshot({snapshot_id}) removed the host directory {victim} named by the image's label"
        + (f" (refused: {refused})" if refused else "")
    )
