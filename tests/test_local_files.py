"""File operations of the local provider, for both clients: a private workspace per sandbox, paths that
mean the same to file operations and to commands, confinement to the workspace, binary-safe transfers and
exact metadata. Everything runs against the real filesystem and real shell commands."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _local import run_unisolated
from _support import close, connect, flavour_of, run_ok, workspace_of

from grainchain import (
    FileInfo,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    SandboxConfig,
)


@pytest.fixture(autouse=True)
def _unisolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests look at sandboxes from the host (host paths and pids): plain host processes.
    tests/test_local_isolation.py and the conformance suite cover isolation="namespaces"."""
    run_unisolated(tmp_path, monkeypatch)


# -- one private workspace per sandbox -----------------------------------------------------------------


async def test_each_sandbox_has_its_own_workspace(make_sandbox: Any, state_dir: Path) -> None:
    one, two = await make_sandbox(), await make_sandbox()
    ws_one, ws_two = await workspace_of(one), await workspace_of(two)

    assert ws_one != ws_two
    assert ws_one.is_dir()
    assert ws_two.is_dir()
    assert ws_one.is_relative_to(state_dir.resolve())
    assert ws_two.is_relative_to(state_dir.resolve())
    assert stat.S_IMODE(ws_one.stat().st_mode) == 0o700  # private to the user

    await one.upload_file("only-in-one.txt", "1")
    await run_ok(one, "echo by-command > made-in-one.txt")
    assert await one.file_exists("only-in-one.txt")
    assert not await two.file_exists("only-in-one.txt")
    assert not await two.file_exists("made-in-one.txt")
    assert (await two.execute("test -e only-in-one.txt || test -e made-in-one.txt")).return_code != 0
    assert [f.name for f in await two.list_files()] == []


async def test_workspace_is_removed_on_close(make_sandbox: Any) -> None:
    sandbox = await make_sandbox()
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("deep/tree/file.txt", "x")
    await run_ok(sandbox, "mkdir -p built && echo out > built/out.txt")

    await close(sandbox)

    assert not ws.exists()
    assert not ws.parent.exists()  # the sandbox's whole directory, not just the workspace


async def test_workspace_is_kept_without_auto_cleanup(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(auto_cleanup=False))
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("kept.txt", "still here")

    await close(sandbox)

    # its disk is unmounted with close (no mount left behind); connect() mounts it again
    again = await connect(flavour_of(sandbox), sandbox.sandbox_id)
    try:
        assert (ws / "kept.txt").read_text() == "still here"
        assert await again.download_file("kept.txt") == b"still here"
    finally:
        await close(again)


# -- file operations and commands agree on paths ---------------------------------------------------------


async def test_uploaded_file_is_seen_by_commands(sandbox: Any) -> None:
    await sandbox.upload_file("a/b.txt", "hello from upload\n")

    assert (await run_ok(sandbox, "cat a/b.txt")).stdout == "hello from upload\n"
    assert (await run_ok(sandbox, "test -d a && echo dir")).stdout == "dir\n"


async def test_file_written_by_a_command_is_downloaded(sandbox: Any) -> None:
    await run_ok(sandbox, "mkdir -p out && printf 'line1\\nline2\\0tail' > out/result.bin")

    assert await sandbox.download_file("out/result.bin") == b"line1\nline2\0tail"


async def test_absolute_paths_inside_the_workspace(sandbox: Any) -> None:
    ws = await workspace_of(sandbox)

    await sandbox.upload_file(f"{ws}/abs/file.txt", "absolute")
    assert (await run_ok(sandbox, f"cat {ws}/abs/file.txt")).stdout == "absolute"
    assert await sandbox.download_file("abs/file.txt") == b"absolute"
    assert await sandbox.download_file(f"{ws}/abs/file.txt") == b"absolute"
    assert [f.name for f in await sandbox.list_files(str(ws))] == ["abs"]
    assert [f.name for f in await sandbox.list_files(f"{ws}/abs")] == ["file.txt"]
    assert await sandbox.file_exists(f"{ws}/abs")
    await sandbox.delete_file(f"{ws}/abs/file.txt")
    assert (await sandbox.execute("test -e abs/file.txt")).return_code == 1


async def test_working_directory_is_shared_by_files_and_commands(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(SandboxConfig(working_directory="sub"))
    cwd = Path((await run_ok(sandbox, "pwd")).stdout.strip())
    root = cwd.parent
    assert cwd.name == "sub"

    await sandbox.upload_file("x.txt", "in sub")
    assert (cwd / "x.txt").read_text() == "in sub"
    assert not (root / "x.txt").exists()
    assert (await run_ok(sandbox, "cat x.txt")).stdout == "in sub"

    await run_ok(sandbox, "echo from-command > y.txt")
    assert await sandbox.download_file("y.txt") == b"from-command\n"
    assert [f.name for f in await sandbox.list_files()] == ["x.txt", "y.txt"]
    assert [f.name for f in await sandbox.list_files(".")] == ["x.txt", "y.txt"]

    # `..` that stays inside the workspace is fine, for both
    await sandbox.upload_file("../top.txt", "top")
    assert (root / "top.txt").read_text() == "top"
    assert (await run_ok(sandbox, "cat ../top.txt")).stdout == "top"
    assert await sandbox.download_file(f"{root}/top.txt") == b"top"
    assert {f.name for f in await sandbox.list_files("..")} == {"sub", "top.txt"}

    # isolation "none": beyond the workspace too, a path means the host path a command's does
    name = f"escaped-{uuid.uuid4().hex[:8]}.txt"
    await sandbox.upload_file(f"../../{name}", "beside")
    try:
        assert (root.parent / name).read_text() == "beside"
        assert (await run_ok(sandbox, f"cat ../../{name}")).stdout == "beside"
    finally:
        (root.parent / name).unlink()


@pytest.mark.parametrize("working_directory", ["..", "../elsewhere", "/tmp", "a/../../b"])
async def test_working_directory_outside_the_workspace_fails_at_creation(
    make_sandbox: Any, working_directory: str, state_dir: Path
) -> None:
    with pytest.raises(PathOutsideSandboxError) as caught:
        await make_sandbox(SandboxConfig(working_directory=working_directory))
    assert caught.value.operation == "create"
    assert os.listdir(state_dir / "local" / "sandboxes") == []  # nothing left behind


# -- paths mean what they mean to commands: without isolation, the host's ----------------------------------


async def test_unisolated_paths_are_host_paths_as_for_commands(sandbox: Any, tmp_path: Path) -> None:
    """isolation "none" runs commands on the host as the client's user: file operations act on the host's
    files as they do (convention:paths; docs/security.md: not a sandbox)."""
    ws = await workspace_of(sandbox)
    await sandbox.make_directory("a")
    assert await sandbox.download_file("/etc/passwd") == Path("/etc/passwd").read_bytes()
    assert await sandbox.download_file("a/../../" * 20 + "etc/passwd") == Path("/etc/passwd").read_bytes()
    assert {f.name for f in await sandbox.list_files("/")} == set(os.listdir("/"))
    assert {f.name for f in await sandbox.list_files("..")} == set(os.listdir(ws.parent))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("before")
    await run_ok(sandbox, f"ln -s {outside} out && ln -s {outside}/victim.txt victim")
    assert await sandbox.download_file("victim") == b"before"
    await sandbox.upload_file("out/victim.txt", "after")  # as `echo after > out/victim.txt` would
    assert (outside / "victim.txt").read_text() == "after"
    await sandbox.upload_file(str(outside / "new.txt"), "new")
    assert (await run_ok(sandbox, f"cat {outside}/new.txt")).stdout == "new"
    await sandbox.delete_file("out/new.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


async def test_the_link_itself_can_be_inspected_and_removed(sandbox: Any, tmp_path: Path) -> None:
    """A link that points out of the workspace is still an entry of the workspace: stat it, delete it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    await run_ok(sandbox, f"ln -s {outside} out && ln -s /etc/passwd pw")

    assert await sandbox.file_exists("out")
    info = await sandbox.get_file_info("pw")
    assert info.is_symlink
    assert info.size == len("/etc/passwd")  # the link, not the file behind it
    names = {f.name: f for f in await sandbox.list_files()}
    assert names["out"].is_symlink
    assert names["pw"].is_symlink

    await sandbox.delete_file("out")
    await sandbox.delete_file("pw")

    assert (outside / "keep.txt").read_text() == "keep"  # the target and its files stay
    assert Path("/etc/passwd").is_file()
    assert (await sandbox.execute("test -e out || test -L out || test -L pw")).return_code == 1


async def test_symlinks_inside_the_workspace_are_followed(sandbox: Any) -> None:
    await sandbox.upload_file("real/data.txt", "data")
    await run_ok(sandbox, "ln -s real alias && ln -s real/data.txt file-alias")

    assert await sandbox.download_file("alias/data.txt") == b"data"
    assert await sandbox.download_file("file-alias") == b"data"
    assert [f.name for f in await sandbox.list_files("alias")] == ["data.txt"]
    await sandbox.upload_file("alias/new.txt", "via link")
    assert (await run_ok(sandbox, "cat real/new.txt")).stdout == "via link"


# -- content -------------------------------------------------------------------------------------------


async def test_every_byte_value_round_trips(sandbox: Any) -> None:
    data = bytes(range(256)) * 4
    await sandbox.upload_file("bytes.bin", data)

    assert await sandbox.download_file("bytes.bin") == data
    assert (await run_ok(sandbox, "wc -c < bytes.bin")).stdout.strip() == str(len(data))
    # and bytes a command writes come back unchanged (printf with octal escapes: no decoding anywhere)
    await run_ok(sandbox, "printf '\\000\\377\\200\\r\\n' > odd.bin")
    assert await sandbox.download_file("odd.bin") == b"\x00\xff\x80\r\n"


async def test_megabytes_of_random_data_round_trip(sandbox: Any) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    await sandbox.upload_file("random.bin", data, mode="wb")

    assert await sandbox.download_file("random.bin") == data
    digest = (await run_ok(sandbox, "sha256sum random.bin")).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()


async def test_str_content_is_written_as_utf8(sandbox: Any) -> None:
    text = "héllo wörld ✓ 🚀\n"
    await sandbox.upload_file("text.txt", text)

    assert await sandbox.download_file("text.txt") == text.encode("utf-8")
    assert (await run_ok(sandbox, "wc -c < text.txt")).stdout.strip() == str(len(text.encode("utf-8")))


async def test_append_and_replace_modes(sandbox: Any) -> None:
    await sandbox.upload_file("log.txt", "one\n")
    await sandbox.upload_file("log.txt", "two\n", mode="a")
    await sandbox.upload_file("log.txt", b"three\n", mode="ab")
    assert await sandbox.download_file("log.txt") == b"one\ntwo\nthree\n"

    await sandbox.upload_file("log.txt", b"replaced", mode="wb")
    assert await sandbox.download_file("log.txt") == b"replaced"
    await sandbox.upload_file("log.txt", "again", mode="w")
    assert await sandbox.download_file("log.txt") == b"again"

    await sandbox.upload_file("new/appended.txt", "created by append", mode="a")
    assert await sandbox.download_file("new/appended.txt") == b"created by append"


@pytest.mark.parametrize("mode", ["r", "rb", "x", "w+", "", "W", "a+"])
async def test_invalid_write_mode_is_refused(sandbox: Any, mode: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await sandbox.upload_file("never.txt", "x", mode=mode)

    assert isinstance(caught.value, ValueError)
    assert caught.value.argument == "mode"
    assert caught.value.operation == "upload_file"
    assert not await sandbox.file_exists("never.txt")


async def test_upload_below_a_file_is_an_invalid_argument(sandbox: Any) -> None:
    await sandbox.upload_file("plain", "I am a file")

    with pytest.raises(InvalidArgumentError):
        await sandbox.upload_file("plain/child.txt", "x")
    with pytest.raises(InvalidArgumentError):
        await sandbox.make_directory("plain/sub")
    await sandbox.make_directory("dir")
    with pytest.raises(InvalidArgumentError):
        await sandbox.upload_file("dir", "a directory is not a file")
    assert await sandbox.download_file("plain") == b"I am a file"


# -- metadata ------------------------------------------------------------------------------------------


def _expected(host: Path) -> dict[str, Any]:
    st = host.lstat()
    is_dir = stat.S_ISDIR(st.st_mode)  # a symlink is described as itself, like FileInfo.is_directory
    return {
        "path": str(host),
        "name": host.name,
        "size": 0 if is_dir else st.st_size,
        "is_directory": is_dir,
        "is_symlink": host.is_symlink(),
        "mode": stat.S_IMODE(st.st_mode),
        "modified_time": datetime.fromtimestamp(st.st_mtime, UTC),
    }


def _actual(info: FileInfo) -> dict[str, Any]:
    return info.model_dump(
        include={"path", "name", "size", "is_directory", "is_symlink", "mode", "modified_time"}
    )


async def test_list_files_matches_the_real_files(sandbox: Any) -> None:
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("data.bin", os.urandom(12345))
    await sandbox.upload_file("docs/readme.md", "# hi\n")
    await run_ok(
        sandbox,
        "printf '#!/bin/sh\\n' > run.sh && chmod 755 run.sh && echo s > secret && chmod 600 secret "
        "&& ln -s data.bin data-link && ln -s docs docs-link && touch -d @981173106 old.txt",
    )

    listing = await sandbox.list_files()

    names = [f.name for f in listing]
    assert names == sorted(["data.bin", "docs", "run.sh", "secret", "data-link", "docs-link", "old.txt"])
    for info in listing:
        assert _actual(info) == _expected(ws / info.name), info.name
    by_name = {f.name: f for f in listing}
    assert by_name["data.bin"].size == 12345
    assert by_name["docs"].is_directory
    assert by_name["docs"].size == 0
    assert by_name["run.sh"].mode == 0o755
    assert by_name["secret"].mode == 0o600
    assert by_name["data-link"].is_symlink
    assert not by_name["data-link"].is_directory
    assert by_name["docs-link"].is_symlink
    assert not by_name["docs-link"].is_directory  # not followed
    assert by_name["old.txt"].modified_time == datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert all(f.modified_time.tzinfo is not None for f in listing)

    assert [_actual(f) for f in await sandbox.list_files("docs")] == [_expected(ws / "docs" / "readme.md")]


async def test_list_files_of_an_empty_directory(sandbox: Any) -> None:
    await sandbox.make_directory("empty")
    assert await sandbox.list_files("empty") == []


async def test_list_missing_directory_raises_file_not_found(sandbox: Any) -> None:
    with pytest.raises(FileNotFoundInSandboxError) as caught:
        await sandbox.list_files("no/such/dir")
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.operation == "list_files"


async def test_list_of_a_file_is_an_invalid_argument(sandbox: Any) -> None:
    await sandbox.upload_file("f.txt", "x")
    with pytest.raises(InvalidArgumentError):
        await sandbox.list_files("f.txt")


async def test_download_missing_file_raises_file_not_found(sandbox: Any) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        await sandbox.download_file("missing.txt")
    assert isinstance(caught.value, FileNotFoundInSandboxError)
    assert caught.value.operation == "download_file"
    assert caught.value.provider == "local"
    assert "missing.txt" in str(caught.value)


async def test_download_of_a_directory_is_an_invalid_argument(sandbox: Any) -> None:
    await sandbox.make_directory("d")
    with pytest.raises(InvalidArgumentError):
        await sandbox.download_file("d")


async def test_a_named_pipe_is_refused_not_waited_on(sandbox: Any) -> None:
    await run_ok(sandbox, "mkfifo pipe")
    with pytest.raises(InvalidArgumentError):
        await sandbox.download_file("pipe")
    for mode in ("w", "a"):
        with pytest.raises(InvalidArgumentError):
            await sandbox.upload_file("pipe", "nobody reads this", mode=mode)
    info = await sandbox.get_file_info("pipe")
    assert not info.is_directory


async def test_get_file_info(sandbox: Any) -> None:
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("dir/file.txt", "12345")

    assert _actual(await sandbox.get_file_info("dir/file.txt")) == _expected(ws / "dir" / "file.txt")
    assert _actual(await sandbox.get_file_info("dir")) == _expected(ws / "dir")
    root = await sandbox.get_file_info(".")
    assert root.is_directory
    assert root.path == str(ws)
    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.get_file_info("dir/missing.txt")


async def test_file_exists(sandbox: Any) -> None:
    await sandbox.upload_file("dir/file.txt", "x")
    await run_ok(sandbox, "ln -s nowhere dangling")

    assert await sandbox.file_exists("dir/file.txt")
    assert await sandbox.file_exists("dir")
    assert await sandbox.file_exists(".")
    assert await sandbox.file_exists("dangling")  # the entry exists even if its target does not
    assert not await sandbox.file_exists("dir/other.txt")
    assert not await sandbox.file_exists("nope/nope")


async def test_delete_file_and_directory_tree(sandbox: Any) -> None:
    await sandbox.upload_file("f.txt", "x")
    await sandbox.upload_file("tree/a/b/c.txt", "deep")
    await run_ok(sandbox, "mkdir -p tree/empty && ln -s ../f.txt tree/link && touch tree/.hidden")

    await sandbox.delete_file("f.txt")
    assert not await sandbox.file_exists("f.txt")
    assert (await sandbox.execute("test -e f.txt")).return_code == 1

    await sandbox.delete_file("tree")
    assert not await sandbox.file_exists("tree")
    assert (await sandbox.execute("test -e tree")).return_code == 1
    assert await sandbox.list_files() == []

    with pytest.raises(FileNotFoundInSandboxError):
        await sandbox.delete_file("tree")


async def test_delete_of_the_workspace_itself_is_refused(sandbox: Any) -> None:
    ws = await workspace_of(sandbox)
    await sandbox.upload_file("keep.txt", "x")
    for path in [".", str(ws), "a/..", "/"]:
        with pytest.raises(InvalidArgumentError):
            await sandbox.delete_file(path)
    assert await sandbox.download_file("keep.txt") == b"x"


async def test_make_directory_with_parents_is_idempotent(sandbox: Any) -> None:
    await sandbox.make_directory("p/q/r")
    assert (await sandbox.execute("test -d p/q/r")).return_code == 0

    await sandbox.upload_file("p/q/r/file.txt", "kept")
    await sandbox.make_directory("p/q/r")  # exists: fine, and nothing inside is lost
    await sandbox.make_directory("p")
    assert await sandbox.download_file("p/q/r/file.txt") == b"kept"
    assert (await sandbox.get_file_info("p/q/r")).is_directory


# -- read-only directories (a user's `chmod -w`, Go's module cache) ----------------------------------------

CHILD_WITH_READ_ONLY_DIRS = """
import os
from grainchain import SandboxConfig
from grainchain.sync import Sandbox


with Sandbox(config=SandboxConfig(provider_config={"isolation": "none"})) as sandbox:  # host paths
    ws = sandbox.execute("pwd").stdout.strip()
    print(ws)
    sandbox.execute("mkdir -p gone/sub && touch gone/sub/f && chmod 500 gone/sub gone")
    sandbox.delete_file("gone")
    assert not sandbox.file_exists("gone")

    sandbox.execute("mkdir -p ro/deep && echo x > ro/deep/f && chmod 500 ro/deep ro")
    snapshot_id = sandbox.create_snapshot()
    sandbox.restore_snapshot(snapshot_id)  # the old tree, read-only dirs included, must go
    assert sandbox.download_file("ro/deep/f") == b"x\\n"
    assert sorted(os.listdir(os.path.dirname(ws))) == ["meta.json", "tmp", "workspace"]
    sandbox.delete_snapshot(snapshot_id)
    sandbox.execute("chmod 500 .")  # even the workspace itself
"""


def test_read_only_directories_do_not_block_cleanup() -> None:
    """Root ignores permissions, so as root the check runs in a child process as `nobody`."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop to an ordinary user")
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    scratch = Path(tempfile.mkdtemp(prefix="grainchain-ro-"))
    try:
        scratch.chmod(0o777)
        env = {
            **os.environ,
            "GRAINCHAIN_STATE_DIR": str(scratch / "state"),
            "GRAINCHAIN_CONFIG": str(scratch / "no-config.toml"),
            "HOME": str(scratch),
        }
        done = subprocess.run(
            [*as_user, sys.executable, "-c", CHILD_WITH_READ_ONLY_DIRS],
            capture_output=True,
            text=True,
            cwd=scratch,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        workspace = Path(done.stdout.strip())
        assert workspace.is_relative_to(scratch)
        assert not workspace.parent.exists()  # closed: the sandbox's directory is gone entirely
        assert os.listdir(scratch / "state" / "local" / "sandboxes") == []
        assert os.listdir(scratch / "state" / "local" / "snapshots") == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_files_written_just_before_a_close_survive_a_busy_disk(tmp_path: Path) -> None:
    """A closed sandbox kept by auto_cleanup=False unmounts its disk lazily while something still holds it.
    A connect that mounted the image through a second loop device read the image file's stale page cache:
    a file written just before the close read back empty (it must mount the still-attached device)."""
    from grainchain import SandboxConfig
    from grainchain.providers.local import _disk
    from grainchain.settings import load_settings
    from grainchain.sync import Sandbox

    settings = load_settings(state_dir=tmp_path / "state")
    if problem := _disk.unavailable(settings.state_dir.resolve()):
        pytest.skip(f"no per-sandbox disk here: {problem}")
    config = SandboxConfig(auto_cleanup=False, provider_config={"isolation": "none"})
    sandbox = Sandbox("local", config, settings=settings).start()
    workspace = sandbox.execute("pwd").stdout.strip()
    holder = subprocess.Popen(["sleep", "60"], cwd=workspace)  # a host process, not the sandbox's: it holds
    try:
        sandbox.upload_file("kept.txt", "written just before the close\n")
        sandbox.close()
        again = Sandbox.connect(
            sandbox.sandbox_id, "local", SandboxConfig(auto_cleanup=True), settings=settings
        )
        try:
            assert again.download_file("kept.txt") == b"written just before the close\n"
        finally:
            holder.kill()
            holder.wait()
            again.close()
    finally:
        holder.kill()
        holder.wait()
