"""upload_directory / download_directory: a tree with every kind of entry goes up, commands see it as it
was, and comes back byte for byte and mode for mode; the targets' rules; missing sources; and a sandbox that
hands back links pointing out, or a hostile archive, writes nothing outside local_path."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from grainchain.errors import FileNotFoundInSandboxError, InvalidArgumentError, PathOutsideSandboxError
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget

ODD_NAME = b"caf\xe9-latin1"  # not UTF-8: goes as its bytes


def make_tree(root: Path) -> None:
    """Nested directories, an empty one, hidden files, an executable script, a private file and directory,
    relative, absolute and dangling symlinks, a binary file over a few transfer buffers, a name that is not
    UTF-8 and one with spaces."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / ".hidden-dir").mkdir()
    (root / ".hidden-dir" / ".hidden").write_bytes(b"hidden\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho ran\n")
    (root / "run.sh").chmod(0o755)
    (root / "secret").write_bytes(b"s")
    (root / "secret").chmod(0o600)
    (root / "a" / "b" / "c" / "deep.txt").write_bytes("héllo\n".encode())
    (root / "a" / "private").mkdir()
    (root / "a" / "private" / "x").write_bytes(b"x")
    (root / "a" / "private").chmod(0o700)
    (root / "blob").write_bytes(hashlib.sha256(b"seed").digest() * (300_000 // 32 + 7))
    (root / "with space").write_bytes(b"")
    os.symlink("../blob", root / "a" / "rel-link")
    os.symlink("/no/such/target", root / "dangling")
    os.symlink("a/b", root / "dir-link")
    (root / os.fsdecode(ODD_NAME)).write_bytes(b"odd")


def local_manifest(root: Path) -> list[str]:
    """inside.manifest's lines for a local tree (names shown as a command shows them: UTF-8, or replaced)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            shown = "./" + os.fsencode(path.relative_to(root)).decode("utf-8", "replace")
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"link|{shown}|{os.readlink(path)}")
            elif stat.S_ISDIR(st.st_mode):
                lines.append(f"dir|{shown}|{stat.S_IMODE(st.st_mode):o}")
            else:
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                lines.append(f"file|{shown}|{stat.S_IMODE(st.st_mode):o}|{len(data)}|{digest}")
    return sorted(lines, key=lambda line: line.split("|")[1].encode())


def exact_tree(root: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """Every entry by its name's bytes: kind, permission bits, content or link target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            key = os.path.relpath(path, os.fsencode(root))
            if stat.S_ISLNK(st.st_mode):
                found[key] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[key] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                with open(path, "rb") as f:
                    found[key] = ("file", stat.S_IMODE(st.st_mode), f.read())
    return found


@pytest.mark.feature("files.directories", "exec")
@pytest.mark.promises(
    "op:upload_directory",
    "op:download_directory",
    "feature:files.directories",
    "param:upload_directory.local_path",
    "param:upload_directory.sandbox_path",
    "param:download_directory.local_path",
)
def test_a_tree_goes_up_and_comes_back_exactly(conformance: ConformanceTarget, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    with conformance.sandbox() as sandbox:
        sandbox.upload_directory(source, "up/tree")  # missing parents made; a PathLike works
        seen = inside.manifest(sandbox, "up/tree")
        assert seen == local_manifest(source), "the tree as commands see it differs from the one sent"
        checks = (
            "cd up/tree && ./run.sh && stat -c %a run.sh secret a/private && readlink a/rel-link && readlink dangling "
            "&& [ -L dangling ] && [ ! -e dangling ] && ls -A empty | wc -l && ls -A | wc -l"
        )
        result = sandbox.execute(checks)
        assert result.return_code == 0, result.stderr
        assert result.stdout.split() == ["ran", "755", "600", "700", "../blob", "/no/such/target", "0", "10"]
        back = tmp_path / "fresh" / "back"  # missing, with a missing parent: both made
        sandbox.download_directory("up/tree", str(back))
        assert exact_tree(back) == exact_tree(source), "the tree came back different"
        # the same from a tree commands made (modes, links and an empty directory of the sandbox's own)
        made = (
            "mkdir -p made/d/e made/empty && printf 'a\\0b' > made/d/e/bin && chmod 751 made/d/e/bin "
            "&& ln made/d/e/bin made/hard && chmod 705 made/d && ln -s d/e/bin made/link "
            "&& ln -s /etc made/out && echo . > made/.dot"
        )
        assert sandbox.execute(made).return_code == 0
        copy = tmp_path / "made"
        copy.mkdir()  # an empty directory is fine too
        sandbox.download_directory("made", copy)
        assert local_manifest(copy) == inside.manifest(sandbox, "made")
        assert (copy / "d" / "e" / "bin").read_bytes() == b"a\0b"
        # and up again into an existing empty directory
        assert sandbox.execute("mkdir again").return_code == 0
        sandbox.upload_directory(copy, "again")
        assert inside.manifest(sandbox, "again") == inside.manifest(sandbox, "made")


@pytest.mark.feature("files.directories", "exec")
@pytest.mark.promises(
    "raises:upload_directory.InvalidArgumentError",
    "raises:download_directory.InvalidArgumentError",
    "param:upload_directory.local_path",
    "param:download_directory.local_path",
    "param:download_directory.sandbox_path",
)
def test_targets_must_be_missing_or_empty(conformance: ConformanceTarget, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "new").write_bytes(b"new")
    with conformance.sandbox() as sandbox:
        assert sandbox.execute("mkdir -p full && echo old > full/old && echo f > plain").return_code == 0
        for target in ("full", "plain"):
            before = inside.manifest(sandbox, ".")
            with pytest.raises(InvalidArgumentError):
                sandbox.upload_directory(source, target)
            assert inside.manifest(sandbox, ".") == before, f"a refused upload into {target} changed files"
        for bad in (tmp_path / "missing", source / "new"):  # the local side: no directory there
            with pytest.raises(InvalidArgumentError):
                sandbox.upload_directory(bad, "elsewhere")
        assert not inside.exists(sandbox, "elsewhere")
        with pytest.raises(InvalidArgumentError):  # a sandbox file is no directory to download
            sandbox.download_directory("plain", tmp_path / "from-plain")
        # the client's target: not empty, or a file, is refused before anything is written
        with pytest.raises(InvalidArgumentError):
            sandbox.download_directory("full", source)
        with pytest.raises(InvalidArgumentError):
            sandbox.download_directory("full", source / "new")
        assert sorted(os.listdir(source)) == ["new"]
        assert (source / "new").read_bytes() == b"new"


@pytest.mark.feature("files.directories")
@pytest.mark.promises(
    "raises:download_directory.FileNotFoundInSandboxError", "param:download_directory.sandbox_path"
)
def test_a_missing_sandbox_directory_raises_file_not_found(
    conformance: ConformanceTarget, tmp_path: Path
) -> None:
    with conformance.sandbox() as sandbox:
        for missing in ("no-such-dir", "no-such-dir/below"):
            with pytest.raises(FileNotFoundInSandboxError):
                sandbox.download_directory(missing, tmp_path / "target")
        assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())


def _archive(*members: tuple[str, bytes, str]) -> bytes:
    """A tar of (name, type, link name) members; regular ones hold b"pwned"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o644
            data = b"pwned" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _hostile(outside: Path) -> list[tuple[str, bytes, bool]]:
    """What a lying sandbox could send (what it tries, the archive, whether it must be refused): a `..`
    name, a link out then a file through it, a hard link to a file outside, an absolute name (taken
    relative to local_path), a device node (skipped)."""
    reg, sym, hard = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    return [
        ("a `..` name", _archive(("./fine", reg, ""), ("../escaped", reg, "")), True),
        (
            "a file through a link out",
            _archive(("./out", sym, str(outside)), ("./out/victim", reg, "")),
            True,
        ),
        (
            "a hard link out",
            _archive(("./hard", hard, f"../{outside.name}/victim"), ("./hard", reg, "")),
            True,
        ),
        ("an absolute name", _archive((f"{outside}/absolute", reg, "")), False),
        ("a device node", _archive(("./dev", tarfile.CHRTYPE, "")), False),
    ]


# A process of a lying sandbox: it swaps every tar part an emulated download_directory leaves in the
# sandbox's /tmp (grainchain/_async/directories.py) for evil.tar, atomically, again and again.
SWAPPER = r"""evil=$PWD/evil.tar
while :; do
  for d in /tmp/.grainchain-download-*; do
    [ -e "$d/part-000000" ] && cp "$evil" "$d/.swap" && mv -f "$d/.swap" "$d/part-000000"
  done
  sleep 0.01
done"""


def _download_swapped(sandbox: Any, targets: Path, refused: bool, what: str) -> Path:
    """Download `tree` until the swapper got its archive in (it races the download: a try it missed brings
    the honest tree, with its `file`); a hostile archive that must be refused raises PathOutsideSandboxError.
    Returns the target of the try that took the hostile archive."""
    for attempt in range(40):
        target = targets / str(attempt)
        try:
            sandbox.download_directory("tree", target)
        except PathOutsideSandboxError:
            assert refused, f"{what}: refused, but it lands inside local_path"
            return target
        if not (target / "file").exists():  # the hostile archive was taken, and not refused
            assert not refused, f"{what}: DID NOT RAISE PathOutsideSandboxError"
            return target
    pytest.fail(f"{what}: the swapper never got its archive into a download in 40 tries")


@pytest.mark.feature("files.directories", "exec", "process.background")
@pytest.mark.promises("raises:download_directory.PathOutsideSandboxError", "op:download_directory")
def test_nothing_is_written_outside_local_path(conformance: ConformanceTarget, tmp_path: Path) -> None:
    """Links pointing out are copied as links and never followed; and where the sandbox itself makes the
    archive (emulated providers: here a process swaps it for a hostile one), every entry that would land
    outside local_path is refused with PathOutsideSandboxError, or lands inside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"untouched")
    with conformance.sandbox() as sandbox:
        links = (
            f"mkdir -p tree && ln -s {outside} tree/out && ln -s ../../../../../../.. tree/up "
            f"&& ln -s / tree/root && echo ok > tree/file"
        )
        assert sandbox.execute(links).return_code == 0
        sandbox.upload_file("evil.tar", _archive(("./marker", tarfile.REGTYPE, "")))
        swapper = sandbox.start_process(SWAPPER)
        try:
            sandbox.download_directory("tree", tmp_path / "first")
            if not (tmp_path / "first" / "marker").exists():  # the provider made the archive itself
                assert os.readlink(tmp_path / "first" / "out") == str(outside)
                assert os.readlink(tmp_path / "first" / "up") == "../../../../../../.."
                assert os.readlink(tmp_path / "first" / "root") == "/"
                assert (tmp_path / "first" / "file").read_bytes() == b"ok\n"
                hostile = []
            else:  # the sandbox's archive was taken: a lying one must write nothing outside
                hostile = _hostile(outside)
            for index, (what, archive, refused) in enumerate(hostile):
                sandbox.upload_file("evil.tar", archive)
                target = _download_swapped(sandbox, tmp_path / "targets" / str(index), refused, what)
                assert sorted(os.listdir(outside)) == ["victim"], f"{what}: written outside local_path"
                assert (outside / "victim").read_bytes() == b"untouched", f"{what}: written outside"
                assert not (tmp_path / "escaped").exists(), f"{what}: written outside local_path"
                assert not (target / "dev").exists(), f"{what}: a device node was made"
        finally:
            swapper.kill()
    assert sorted(os.listdir(tmp_path)) == sorted(["outside", "first", *(["targets"] if hostile else [])])
