"""Copy snapshots clone file data on filesystems with reflinks (checked on a loop-mounted XFS), and copy it
where there are none (every other snapshot test runs on such a filesystem)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from grainchain import SandboxConfig
from grainchain.sync import Sandbox

# no disk quota: the workspace then lies on the state dir's filesystem, where the snapshots are
COPIES = SandboxConfig(provider_config={"isolation": "none", "snapshots": "copy", "disk_limit": None})


@pytest.fixture
def xfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir on a fresh XFS with reflinks (a sparse 400 MB image, loop-mounted)."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("needs root and mkfs.xfs (apt-get install xfsprogs; .ci/local-up installs it)")
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(400 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mount.mkdir()
    if subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=False).returncode != 0:
        pytest.skip("cannot loop-mount here")
    monkeypatch.setenv("GRAINCHAIN_STATE_DIR", str(mount / "state"))
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def used_kib(path: Path) -> int:
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def test_copy_snapshots_share_data_on_a_reflink_filesystem(xfs: Path) -> None:
    with Sandbox("local", COPIES) as sandbox:
        sandbox.execute("head -c 50000000 /dev/urandom > big && echo small > small")
        digest = sandbox.execute("sha256sum big").stdout
        before = used_kib(xfs)
        snapshot_id = sandbox.create_snapshot()
        assert used_kib(xfs) - before < 5_000, "the snapshot copied the data instead of cloning it"
        sandbox.execute("rm big && echo changed > small")
        sandbox.restore_snapshot(snapshot_id)
        assert sandbox.execute("sha256sum big").stdout == digest
        assert sandbox.download_file("small") == b"small\n"
        assert used_kib(xfs) - before < 5_000, "the restore copied the data instead of cloning it"
