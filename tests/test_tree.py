"""grainchain/_tree.py, what every provider's directory transfer goes through: packing a local tree (links
never followed, special files skipped, files that change size meanwhile), unpacking an archive from a
sandbox into local_path (nothing written outside, whatever the archive holds) and unpacking into a
directory the sandbox can change meanwhile (nothing written through a link swapped in)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from grainchain import _tree
from grainchain.errors import CapabilityError, InvalidArgumentError, PathOutsideSandboxError, ProviderError
from grainchain_conformance.test_directories import _archive as conformance_archive


def _archive(*members: tuple[str, bytes, str]) -> io.BytesIO:
    """The conformance suite's hostile archive, as a file to read."""
    return io.BytesIO(conformance_archive(*members))


def _everything(root: Path) -> set[str]:
    return {str(Path(d, n).relative_to(root)) for d, ds, fs in os.walk(root) for n in ds + fs}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "victim").write_bytes(b"untouched")
    return place


REG, SYM, HARD = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    "members",
    [
        pytest.param([("../escaped", REG, "")], id="dotdot"),
        pytest.param([("./a/../../escaped", REG, "")], id="dotdot-inside"),
        pytest.param([("./out", SYM, "{outside}"), ("./out/victim", REG, "")], id="through-absolute-link"),
        pytest.param([("./up", SYM, ".."), ("./up/outside/victim", REG, "")], id="through-relative-link"),
        pytest.param([("./hard", HARD, "../outside/victim"), ("./hard", REG, "")], id="hard-link-out"),
        pytest.param([("./hard", HARD, "{outside}/victim")], id="hard-link-absolute"),
        pytest.param([("./out", SYM, "{outside}/victim"), ("./out", REG, "")], id="file-over-link-out"),
    ],
)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(
    tmp_path: Path, outside: Path, members: list[tuple[str, bytes, str]]
) -> None:
    members = [(n, k, link.format(outside=outside)) for n, k, link in members]
    before = _everything(tmp_path)
    with pytest.raises(PathOutsideSandboxError) as info:
        _tree.extract(_archive(*members), tmp_path / "target", "download_directory")
    assert "outside local_path" in str(info.value)
    assert _everything(tmp_path) - before <= {"target", "target/out", "target/up", "target/a"}
    assert (outside / "victim").read_bytes() == b"untouched"
    assert os.listdir(outside) == ["victim"]


def test_absolute_names_land_inside_and_special_files_are_skipped(tmp_path: Path, outside: Path) -> None:
    archive = _archive(
        (f"{outside}/absolute", REG, ""),
        ("./dev", tarfile.CHRTYPE, ""),
        ("./fifo", tarfile.FIFOTYPE, ""),
        ("./in", SYM, "sub"),
        ("./sub/", tarfile.DIRTYPE, ""),
        ("./in/through-a-link-inside", REG, ""),
        ("./link-out", SYM, str(outside)),  # a link is kept as it is: nothing follows it
    )
    target = tmp_path / "target"
    _tree.extract(archive, target, "download_directory")
    assert (target / str(outside).lstrip("/") / "absolute").read_bytes() == b"pwned"
    assert not (target / "dev").exists()
    assert not (target / "fifo").exists()
    assert (target / "sub" / "through-a-link-inside").read_bytes() == b"pwned"
    assert os.readlink(target / "link-out") == str(outside)
    assert os.listdir(outside) == ["victim"]


def test_modes_are_kept_and_owners_are_not(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "ro").mkdir(parents=True)
    (source / "ro" / "f").write_bytes(b"f")
    (source / "group-writable").write_bytes(b"g")
    (source / "group-writable").chmod(0o664)
    (source / "ro").chmod(0o555)  # children are made before the directory's mode is set
    fd = _tree.local_source(source, "t")
    try:
        _tree.extract(_tree.ChunkReader(_tree.pack(fd)), tmp_path / "back", "t")
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "back" / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(tmp_path / "back" / "group-writable").st_mode) == 0o664
    assert (tmp_path / "back" / "ro" / "f").read_bytes() == b"f"
    (source / "ro").chmod(0o755)
    (tmp_path / "back" / "ro").chmod(0o755)


def test_pack_never_follows_links_and_skips_special_files(tmp_path: Path, outside: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    os.symlink(outside, source / "dir-link")
    os.mkfifo(source / "fifo")
    big = os.urandom(3 * _tree.CHUNK + 17)
    (source / "big").write_bytes(big)
    fd = _tree.local_source(source, "t")
    try:
        data = b"".join(_tree.pack(fd))
    finally:
        os.close(fd)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert set(names) == {"dir-link", "big"}, "the link's target was walked, or the FIFO packed"
        assert names["dir-link"].issym()
        assert names["dir-link"].linkname == str(outside)
        extracted = tar.extractfile("big")
        assert extracted is not None
        assert extracted.read() == big


def test_local_paths_are_checked_before_anything_happens(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    for bad in ("missing", "file"):
        with pytest.raises(InvalidArgumentError) as info:
            _tree.local_source(tmp_path / bad, "upload_directory")
        assert info.value.argument == "local_path"
    for bad in ("full", "file"):
        with pytest.raises(InvalidArgumentError):
            _tree.local_target(tmp_path / bad, "download_directory")
    assert (
        _tree.local_target(tmp_path / "new" / "deeper", "download_directory") == tmp_path / "new" / "deeper"
    )
    assert not (tmp_path / "new").exists(), "a check must not make the target"


def test_unpacking_never_writes_through_a_link_the_sandbox_swapped_in(tmp_path: Path, outside: Path) -> None:
    """unpack_at (the local provider's upload) opens every parent O_NOFOLLOW from the target's descriptor:
    a directory that became a link meanwhile stops the unpack instead of leading out."""
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "a")  # as if the sandbox swapped the directory `a` for a link
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ProviderError, match="changed while the directory was unpacked"):
            _tree.unpack_at(fd, _archive(("./a/new", REG, "")), "upload_directory")
        (target / "taken").write_bytes(b"sandbox's")  # a file created there meanwhile
        with pytest.raises(ProviderError, match="changed while"):
            _tree.unpack_at(fd, _archive(("./taken", REG, "")), "upload_directory")
        with pytest.raises(PathOutsideSandboxError):
            _tree.unpack_at(fd, _archive(("../escaped", REG, "")), "upload_directory")
    finally:
        os.close(fd)
    assert os.listdir(outside) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"
    assert (target / "taken").read_bytes() == b"sandbox's"
    assert not (tmp_path / "escaped").exists()


def test_the_facade_checks_local_path_before_anything_else(memory_provider: Any) -> None:
    """Bad local paths are InvalidArgumentError naming local_path, before the capability gate (the memory
    provider does not declare files.directories) and before any provider call."""
    import grainchain.sync

    memory_provider()
    with grainchain.sync.Sandbox(provider="memory") as sandbox:
        for bad in (None, 7, b"/tmp", "", "a\0b"):
            with pytest.raises(InvalidArgumentError) as info:
                sandbox.upload_directory(bad, "target")
            assert info.value.argument == "local_path"
            with pytest.raises(InvalidArgumentError) as info:
                sandbox.download_directory("source", bad)
            assert info.value.argument == "local_path"
        with pytest.raises(CapabilityError) as gate:
            sandbox.upload_directory(Path("."), "target")
        assert gate.value.feature == "files.directories"
