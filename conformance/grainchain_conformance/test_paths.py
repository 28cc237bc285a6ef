"""One meaning of paths (convention:paths): file operations see exactly the filesystem commands see.

`/` is the sandbox's `/` (list_files("/") names what `ls -A /` names), a relative path starts at the
working directory, `..` and symlinks resolve as for a command; what a command writes is downloadable at the
same path and what is uploaded a command reads there; a path a command may not write cannot be written by
a file operation either (PermissionDeniedError). Paths leading towards the client's host (a canary
directory on this machine) reach only what the sandbox's commands see there: nothing, unless the sandbox
shares the host's filesystem (local with isolation "none").
"""

from __future__ import annotations

import posixpath
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from grainchain.errors import FileNotFoundInSandboxError, GrainchainError, PermissionDeniedError
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget

PATH_OPS = (
    "upload_file",
    "download_file",
    "list_files",
    "get_file_info",
    "file_exists",
    "delete_file",
    "make_directory",
)


@pytest.fixture
def canary() -> Iterator[Path]:
    """A directory on the client's host with a secret in it, under the system's temporary directory."""
    yield from host_canary()


def host_canary() -> Iterator[Path]:
    """The canary fixture's body (suite.PathsSuite has the same fixture as a method)."""
    root = Path(tempfile.gettempdir()) / f"gc-conformance-canary-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    (root / "secret").write_text("host secret")
    (root / "sub").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ways_out(canary: Path) -> dict[str, str]:
    """Paths that leave the sandbox's working directory towards the canary, as a command would write them."""
    return {
        "absolute": str(canary),
        "dot-dot": "../" * 40 + str(canary).lstrip("/"),
        "dot-dot after a directory": "dir-with-link/../" + "../" * 40 + str(canary).lstrip("/"),
        "symlink": "link-out",
        "relative symlink": "rel-link-out",
        "symlink on the way": "dir-with-link/out",
    }


def _outcome(operation: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", operation(*args)
    except FileNotFoundInSandboxError:
        return "not found", None
    except PermissionDeniedError:
        return "refused", None
    except GrainchainError as exc:  # (PathOutsideSandboxError among them: no file operation raises it)
        return "error", exc


def _host_state(canary: Path) -> list[tuple[str, bytes | None]]:
    return sorted(
        (str(p.relative_to(canary)), p.read_bytes() if p.is_file() else None) for p in canary.rglob("*")
    )


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("convention:paths")
def test_paths_leading_out_reach_only_what_commands_see(conformance: ConformanceTarget, canary: Path) -> None:
    with conformance.sandbox() as sandbox:
        made = sandbox.execute(
            f"ln -s {canary} link-out && ln -s {'../' * 40}{str(canary).lstrip('/')} rel-link-out "
            f"&& mkdir dir-with-link && ln -s {canary} dir-with-link/out"
        )
        assert made.return_code == 0, made.stderr
        before = _host_state(canary)
        for way, base in _ways_out(canary).items():
            secret, sub, new = f"{base}/secret", f"{base}/sub", f"{base}/new-{uuid.uuid4().hex[:6]}"
            seen = inside.view(sandbox, secret)  # what a command reads there (the host's secret only if the
            sees_host = seen == b"host secret"  # sandbox shares the host's filesystem)
            outcomes = {
                "download_file": _outcome(sandbox.download_file, secret),
                "get_file_info": _outcome(sandbox.get_file_info, secret),
                "file_exists": _outcome(sandbox.file_exists, secret),
                "list_files": _outcome(sandbox.list_files, sub),
                "make_directory": _outcome(sandbox.make_directory, f"{new}-dir"),
                "upload_file": _outcome(sandbox.upload_file, new, b"written"),
            }
            where = f"{way} ({base!r})"
            errors = {op: out for op, (kind, out) in outcomes.items() if kind == "error"}
            assert not errors, f"{where}: a path means what it means to a command; got {errors}"
            kind, data = outcomes["download_file"]
            assert (kind, data) == (("ok", seen) if seen is not None else ("not found", None)), (
                f"{where}: download_file gave {kind} {data!r}; a command reads {seen!r}"
            )
            kind, info = outcomes["get_file_info"]
            assert kind == ("ok" if seen is not None else "not found"), f"{where}: get_file_info {kind}"
            if info is not None:
                assert info.size == len(seen or b""), f"{where}: get_file_info size {info.size}"
            assert outcomes["file_exists"] == ("ok", inside.exists(sandbox, secret)), where
            kind, _ = outcomes["list_files"]
            if kind == "ok":
                assert inside.exists(sandbox, sub), f"{where}: list_files lists a directory commands lack"
            kind, _ = outcomes["upload_file"]
            if kind == "ok":
                assert inside.view(sandbox, new) == b"written", f"{where}: upload_file wrote elsewhere"
            if not sees_host:
                assert _host_state(canary) == before, f"{where}: the client's host changed"
            kind, _ = _outcome(sandbox.delete_file, secret)
            if not sees_host:
                assert canary.joinpath("secret").read_text() == "host secret", f"{where}: deleted on host"
            else:  # deleted where commands delete it: the host's, put back for the next way
                assert not canary.joinpath("secret").exists(), f"{where}: delete_file deleted elsewhere"
                canary.joinpath("secret").write_text("host secret")
            sandbox.execute(
                f"rm -rf -- {shlex.quote(new)} {shlex.quote(new)}-dir"
            )  # (only what the sandbox itself sees)


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("convention:paths", "op:download_file", "op:upload_file")
def test_dot_dot_and_dot_inside_the_sandbox_resolve_like_a_shell(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        sandbox.execute("mkdir -p a/b/c && printf one > a/b/c/f && ln -s b/c a/to-c")
        workdir = sandbox.execute("pwd").stdout.strip()
        same = [
            "a/b/c/f",
            "./a/b/c/f",
            "a/./b/../b/c/f",
            "a//b/c/f",
            "a/to-c/f",
            f"{workdir}/a/b/c/f",
            f"{workdir}/a/../a/b/c/f",
        ]
        for path in same:
            assert sandbox.download_file(path) == b"one", path
            assert sandbox.get_file_info(path).size == 3, path
        sandbox.upload_file("a/b/../written", b"two")
        assert inside.view(sandbox, "a/written") == b"two"
        sandbox.upload_file("a/to-c/through-link", b"three")  # a link inside leads where commands go
        assert inside.view(sandbox, "a/b/c/through-link") == b"three"
        assert {i.name for i in sandbox.list_files("a/to-c")} == {"f", "through-link"}


def _ls(sandbox: Any, path: str) -> set[str]:
    shown = sandbox.execute(f"cd {shlex.quote(path)} && ls -A1")
    assert shown.return_code == 0, f"ls {path}: {shown.stderr}"
    return set(str(shown.stdout).splitlines())


def _tag() -> str:
    return f"gc-paths-{uuid.uuid4().hex[:10]}"


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("convention:paths", "op:list_files", "param:list_files.path")
def test_list_files_of_the_root_names_what_ls_names(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        for path in ("/", ".", "/tmp", "/etc"):
            # ls before and after: a sandbox sharing the host's /tmp sees other processes' files come and go
            before, listed, after = _ls(sandbox, path), sandbox.list_files(path), _ls(sandbox, path)
            names = {i.name for i in listed}
            assert before & after <= names <= before | after, (
                f"list_files({path!r}) vs ls -A {path}: missing {sorted((before & after) - names)}, "
                f"extra {sorted(names - (before | after))}"
            )
            here = sandbox.execute(f"cd {shlex.quote(path)} && pwd").stdout.strip()
            for info in listed:
                assert info.path == posixpath.join(here, info.name), f"{path}: {info.path} is not {here}/.."


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("convention:paths", "op:download_file", "op:upload_file", "op:file_exists")
def test_commands_and_file_operations_meet_at_every_path(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        workdir = sandbox.execute("pwd").stdout.strip()
        tag = _tag()
        assert sandbox.execute(f"mkdir -p {tag}-sub").return_code == 0
        up = "../" * (workdir.count("/") + 3)  # more `..` than there are directories: stops at `/`
        paths = [
            f"/tmp/{tag}-a",  # a directory every sandbox has, outside the working directory
            f"{tag}-b",  # relative: in the working directory
            f"{workdir}/{tag}-c",  # the working directory, absolute
            f"{tag}-sub/../{tag}-d",  # relative, through `..`
            f"../{posixpath.basename(workdir)}/{tag}-e" if workdir != "/" else f"{tag}-e",
            f"{up}tmp/{tag}-f",  # `..` above `/` stays at `/`
            f"/tmp/../tmp/./{tag}-g",
        ]
        for i, path in enumerate(paths):
            by_command = f"written by a command {i}".encode()
            wrote = sandbox.execute(f"printf %s {shlex.quote(by_command.decode())} > {shlex.quote(path)}")
            assert wrote.return_code == 0, f"{path}: {wrote.stderr}"
            assert sandbox.file_exists(path), path
            assert sandbox.download_file(path) == by_command, f"{path}: download_file reads elsewhere"
            by_upload = f"uploaded {i}".encode()
            sandbox.upload_file(path, by_upload)
            assert inside.view(sandbox, path) == by_upload, f"{path}: upload_file wrote elsewhere"
            sandbox.delete_file(path)
            assert not inside.exists(sandbox, path), f"{path}: delete_file deleted elsewhere"
        sandbox.make_directory(f"/tmp/{tag}-dir/inner")
        assert sandbox.execute(f"test -d /tmp/{tag}-dir/inner").return_code == 0
        sandbox.execute(f"rm -rf /tmp/{tag}-dir {tag}-sub")


# Files that exist in every Linux sandbox; commands may read them
SYSTEM_FILES = ("/etc/hostname", "/etc/passwd", "/etc/os-release", "/etc/hosts", "/proc/version")


@pytest.mark.feature("files", "exec")
@pytest.mark.promises("convention:paths", "op:download_file", "op:get_file_info")
def test_system_files_read_as_commands_read_them(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        read = 0
        for path in SYSTEM_FILES:
            seen = inside.view(sandbox, path)
            if seen is None:
                assert not sandbox.file_exists(path) or sandbox.get_file_info(path).is_directory is False
                continue
            if path.startswith("/proc/"):  # its size is 0 to stat, its content made when read
                assert sandbox.download_file(path).split()[:3] == seen.split()[:3], path
            else:
                assert sandbox.download_file(path) == seen, f"{path}: not what a command reads"
                info = sandbox.get_file_info(path)  # (a link itself: its own size)
                assert info.is_symlink or info.size == len(seen), path
            read += 1
        assert read >= 2, f"commands read fewer than two of {SYSTEM_FILES}"
        relative = "../" * 20 + "etc/passwd"  # `..` stops at `/`, as for a command
        assert sandbox.download_file(relative) == inside.view(sandbox, "/etc/passwd")


def _refused_to_commands(sandbox: Any, script: str) -> bool:
    return bool(sandbox.execute(f"( {script} ) 2>/dev/null").return_code != 0)


@pytest.mark.feature("files", "exec")
@pytest.mark.promises(
    "convention:paths",
    "raises:upload_file.PermissionDeniedError",
    "raises:make_directory.PermissionDeniedError",
    "raises:delete_file.PermissionDeniedError",
)
def test_what_commands_may_not_write_file_operations_may_not_either(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        tag = _tag()
        new_file, new_dir = f"/proc/sys/kernel/{tag}", f"/proc/sys/{tag}/inner"
        # the kernel lets nobody create files in /proc/sys, nor delete /proc/version
        assert _refused_to_commands(sandbox, f"printf x > {new_file}"), "a command wrote into /proc/sys"
        assert _refused_to_commands(sandbox, f"mkdir -p {new_dir}"), "a command made a directory in /proc/sys"
        assert _refused_to_commands(sandbox, "rm -f /proc/version"), "a command deleted /proc/version"
        with pytest.raises(PermissionDeniedError):
            sandbox.upload_file(new_file, b"x")
        with pytest.raises(PermissionDeniedError):
            sandbox.upload_file(new_file, b"x", mode="a")
        with pytest.raises(PermissionDeniedError):
            sandbox.make_directory(new_dir)
        with pytest.raises(PermissionDeniedError):
            sandbox.delete_file("/proc/version")
        assert not inside.exists(sandbox, new_file)
        assert inside.exists(sandbox, "/proc/version")
        # a read-only file system, where the provider mounts one (local: the host's /usr, /etc): a command
        # refused there means the file operation is refused too
        targets = [f"{directory}/{tag}" for directory in ("/usr", "/etc", "")]
        try:
            for target in targets:
                if _refused_to_commands(sandbox, f"printf x > {target}"):
                    with pytest.raises(PermissionDeniedError):
                        sandbox.upload_file(target, b"x")
                    assert not inside.exists(sandbox, target), target
                else:
                    sandbox.upload_file(target, b"y")
                    assert inside.view(sandbox, target) == b"y"
        finally:
            sandbox.execute("rm -f " + " ".join(targets))
