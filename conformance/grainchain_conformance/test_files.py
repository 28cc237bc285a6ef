"""File operations: missing paths, parents created, every upload mode, sizes around the buffer sizes
providers use, awkward names, and every FileInfo field against what commands in the sandbox see."""

from __future__ import annotations

import hashlib
import os
import shlex
from datetime import UTC, datetime

import pytest

from grainchain.errors import FileNotFoundInSandboxError
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget

# 4 KiB pages, 64 KiB pipe and chunk sizes, 1 MiB transfer buffers: each boundary, one below and one above
SIZES = [0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 262_145, 1_048_575, 1_048_576, 1_048_577, 3_145_735]

# names that break naive quoting, globbing, option parsing or encoding
NAMES = [
    "-leading-dash",
    "--",
    ".hidden",
    "..double",
    "a.b.c",
    "with space",
    "tab\there",
    "*",
    "?",
    "~x",
    "quote'\"",
    "$(echo no)",
    "`echo no`",
    "back\\slash",
    "x;y&z|w",
    "éü中文",
    "emoji-🙂",
    "n" * 200,
]


@pytest.mark.feature("files")
@pytest.mark.promises(
    "raises:download_file.FileNotFoundInSandboxError",
    "raises:delete_file.FileNotFoundInSandboxError",
    "raises:list_files.FileNotFoundInSandboxError",
    "raises:get_file_info.FileNotFoundInSandboxError",
    "op:file_exists",
)
def test_a_missing_path_raises_file_not_found(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.upload_file("present/file", b"x")
        for missing in ("no-such-file", "present/no-such-file", "no-such-dir/file"):
            for operation in ("download_file", "delete_file", "list_files", "get_file_info"):
                with pytest.raises(FileNotFoundInSandboxError):
                    getattr(sandbox, operation)(missing)
            assert sandbox.file_exists(missing) is False
        assert sandbox.file_exists("present") is True, "a directory exists too"
        assert sandbox.file_exists("present/file") is True
        assert sandbox.download_file("present/file") == b"x", "a failed delete took the file"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises(
    "op:upload_file",
    "param:upload_file.mode",
    "param:upload_file.content",
    "op:make_directory",
    "op:delete_file",
    "feature:files",
)
def test_upload_modes_parents_and_deletes(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.upload_file("deep/er/and/deeper/f.txt", "héllo\n")  # parents created, str as UTF-8
        assert inside.view(sandbox, "deep/er/and/deeper/f.txt") == "héllo\n".encode()
        sandbox.upload_file("deep/er/and/deeper/f.txt", b"\x00\xff", mode="ab")
        sandbox.upload_file("deep/er/and/deeper/f.txt", "+", mode="a")
        assert sandbox.download_file("deep/er/and/deeper/f.txt") == "héllo\n".encode() + b"\x00\xff+"
        sandbox.upload_file("deep/er/and/deeper/f.txt", b"short", mode="wb")  # replaces, not overwrites
        assert inside.view(sandbox, "deep/er/and/deeper/f.txt") == b"short"
        sandbox.upload_file("appended-new", b"created by append", mode="ab")
        assert inside.view(sandbox, "appended-new") == b"created by append"
        sandbox.make_directory("made/one/two")
        sandbox.make_directory("made/one/two")  # an existing directory is fine
        sandbox.make_directory("made")
        assert sandbox.execute("test -d made/one/two").return_code == 0
        sandbox.upload_file("made/one/two/.dot", b".")
        sandbox.upload_file("made/.hidden", b"hidden entries go too")
        sandbox.make_directory("made/.hidden-dir")
        sandbox.delete_file("made")  # a directory with everything in it
        assert not inside.exists(sandbox, "made")
        sandbox.delete_file("deep/er/and/deeper/f.txt")
        assert not inside.exists(sandbox, "deep/er/and/deeper/f.txt")
        assert inside.exists(sandbox, "deep/er/and/deeper"), "deleting a file took its directory"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("param:upload_file.mode")
def test_append_keeps_the_files_mode(conformance: ConformanceTarget) -> None:
    """An append adds to the file; it does not make a new one with the provider's default mode (an
    adapter that appends by rewriting the whole file must carry the mode over)."""
    with conformance.sandbox() as sandbox:
        setup = "printf '#!/bin/sh\\necho one\\n' > run.sh && chmod 750 run.sh && printf x > secret && chmod 600 secret"
        assert sandbox.execute(setup).return_code == 0
        sandbox.upload_file("run.sh", "echo two\n", mode="a")
        sandbox.upload_file("secret", b"y", mode="ab")
        modes = sandbox.execute("stat -c %a run.sh secret").stdout.split()
        assert modes == ["750", "600"], f"modes after an append: {modes}, before: 750 and 600"
        assert sandbox.execute("./run.sh").stdout == "one\ntwo\n"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("op:download_file", "param:upload_file.content", "feature:files", "field:FileInfo.size")
def test_sizes_around_every_buffer_boundary_round_trip(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        for size in SIZES:
            data = os.urandom(size)
            sandbox.upload_file(f"size-{size}", data, mode="wb")
            shown = sandbox.execute(f"wc -c < size-{size}; sha256sum < size-{size}").stdout.split()
            assert shown[:2] == [str(size), hashlib.sha256(data).hexdigest()], f"{size} bytes uploaded"
            # and the other way: a file a command wrote, downloaded
            sandbox.execute(f"cp size-{size} copy-{size}")
            assert sandbox.download_file(f"copy-{size}") == data, f"{size} bytes downloaded"
            assert sandbox.get_file_info(f"copy-{size}").size == size, f"{size} bytes stat"
        listed = {i.name: i.size for i in sandbox.list_files(".") if i.name.startswith("copy-")}
        assert listed == {f"copy-{size}": size for size in SIZES}, "list_files sizes"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("op:list_files", "field:FileInfo.name", "field:FileInfo.path")
def test_awkward_names_are_listed_and_reached(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.make_directory("names")
        for index, name in enumerate(NAMES):
            sandbox.upload_file(f"names/{name}", f"content {index}")
        listed = {info.name: info for info in sandbox.list_files("names")}
        assert sorted(listed) == sorted(NAMES), "a listing lost, added or changed names"
        shown = sandbox.execute("ls -A names | wc -l").stdout.strip()
        assert shown == str(len(NAMES))
        for index, name in enumerate(NAMES):
            info = listed[name]
            assert sandbox.get_file_info(f"names/{name}") == info
            # the path as commands see it: a command reads the same file there
            read = sandbox.execute(f"cat -- {shlex.quote(info.path)}")
            assert read.stdout == f"content {index}", f"{info.path!r} is not where commands see {name!r}"
            assert sandbox.download_file(f"names/{name}") == f"content {index}".encode()


@pytest.mark.feature("files", "exec")
@pytest.mark.promises(
    "op:get_file_info",
    "field:FileInfo.path",
    "field:FileInfo.size",
    "field:FileInfo.is_directory",
    "field:FileInfo.is_symlink",
    "field:FileInfo.mode",
    "field:FileInfo.modified_time",
    "param:list_files.path",
)
def test_file_info_matches_what_commands_see(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        setup = (
            "mkdir -p meta/sub && printf 12345 > meta/file && printf '#!/bin/sh\\necho ran\\n' > meta/run.sh "
            "&& chmod 640 meta/file && chmod 755 meta/run.sh && chmod 750 meta/sub "
            "&& ln -s file meta/link-to-file && ln -s sub meta/link-to-dir && ln -s missing meta/dangling "
            "&& TZ=UTC touch -t 202001020304.05 meta/file"
        )
        assert sandbox.execute(setup).return_code == 0
        workdir = sandbox.execute("pwd").stdout.strip()
        listed = {info.name: info for info in sandbox.list_files("meta")}
        assert sorted(listed) == ["dangling", "file", "link-to-dir", "link-to-file", "run.sh", "sub"]
        expected = {  # name: (is_directory, is_symlink, size, mode)
            "file": (False, False, 5, 0o640),
            "run.sh": (False, False, 19, 0o755),
            "sub": (True, False, 0, 0o750),
            "link-to-file": (False, True, len("file"), None),
            "link-to-dir": (False, True, len("sub"), None),
            "dangling": (False, True, len("missing"), None),
        }
        modes_known = listed["file"].mode is not None
        for name, (is_dir, is_link, size, mode) in expected.items():
            info = listed[name]
            assert info.path == f"{workdir}/meta/{name}", f"{name}: path {info.path}"
            assert (info.is_directory, info.is_symlink, info.size) == (is_dir, is_link, size), name
            if modes_known and mode is not None:
                assert info.mode == mode, f"{name}: mode {oct(info.mode or 0)}, commands see {oct(mode)}"
            assert (info.mode is not None) == modes_known, "mode is known for some entries only"
            assert info.modified_time.utcoffset() is not None, "modified_time must be timezone-aware"
            assert sandbox.get_file_info(f"meta/{name}") == info, (
                f"get_file_info and list_files differ: {name}"
            )
        assert listed["file"].modified_time == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert abs((listed["sub"].modified_time - datetime.now(UTC)).total_seconds()) < 600
        assert sandbox.list_files(".") == sandbox.list_files(workdir), '"." is the working directory'
        meta = sandbox.get_file_info("meta")
        assert (meta.is_directory, meta.size) == (True, 0)
