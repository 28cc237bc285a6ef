"""Local uploads replace a file atomically (a temporary file in the same directory, renamed over the name):
a reader that had the old file open keeps reading the old content, the file keeps its permissions,
appends carry the old content over, and nothing is left beside the file. (What a client killed mid-upload
leaves: tests/test_local_crash.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grainchain import SandboxConfig
from grainchain.providers.local._isolation import namespaces_unavailable
from grainchain.providers.local._localfs import SandboxDir
from grainchain.sync import Sandbox

MODES = ["none"] + ([] if namespaces_unavailable() else ["namespaces"])


@pytest.mark.parametrize("isolation", MODES)
def test_an_upload_over_a_file_replaces_it_whole_and_keeps_its_mode(isolation: str, state_dir: Path) -> None:
    config = SandboxConfig(provider_config={"isolation": isolation})
    with Sandbox("local", config) as box:
        assert box.sandbox_id is not None
        box.upload_file("dir/data.bin", b"old content")
        box.execute("chmod 640 dir/data.bin")
        host = SandboxDir(state_dir.resolve(), box.sandbox_id).workspace / "dir" / "data.bin"
        with open(host, "rb") as reader:  # opened before the upload: it keeps the file it opened
            box.upload_file("dir/data.bin", b"new")
            assert reader.read() == b"old content"  # written in place, it would read b"new"
        assert box.download_file("dir/data.bin") == b"new"
        assert box.get_file_info("dir/data.bin").mode == 0o640

        box.upload_file("dir/data.bin", b"+more", mode="ab")
        assert box.download_file("dir/data.bin") == b"new+more"
        assert box.get_file_info("dir/data.bin").mode == 0o640

        box.execute("chmod 4755 dir/data.bin")
        box.upload_file("dir/data.bin", b"no setuid for uploaded content")
        assert box.get_file_info("dir/data.bin").mode == 0o755

        box.upload_file("dir/fresh.txt", "a new file")
        umask = os.umask(0)
        os.umask(umask)
        assert box.get_file_info("dir/fresh.txt").mode == 0o666 & ~umask
        assert sorted(i.name for i in box.list_files("dir")) == ["data.bin", "fresh.txt"]  # no temporary
