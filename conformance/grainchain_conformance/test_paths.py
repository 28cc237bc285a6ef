"""Path confinement (convention:paths): `..`, absolute paths and symlinks leading out of the sandbox.

A file operation acts on exactly what a command in the sandbox reaches at the path, or raises
PathOutsideSandboxError; every operation agrees on which paths are outside; nothing on the client's host
changes unless the sandbox's commands see that very file (a provider whose sandbox shares the host's
filesystem). A canary directory on the host (this process's machine) shows escapes.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from grainchain.errors import FileNotFoundInSandboxError, GrainchainError, PathOutsideSandboxError
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
    except PathOutsideSandboxError:
        return "outside", None
    except FileNotFoundInSandboxError:
        return "not found", None
    except GrainchainError as exc:
        return "error", exc


def _host_state(canary: Path) -> list[tuple[str, bytes | None]]:
    return sorted(
        (str(p.relative_to(canary)), p.read_bytes() if p.is_file() else None) for p in canary.rglob("*")
    )


@pytest.mark.feature("files", "exec")
@pytest.mark.promises(
    "convention:paths",
    "raises:upload_file.PathOutsideSandboxError",
    "raises:download_file.PathOutsideSandboxError",
    "raises:list_files.PathOutsideSandboxError",
    "raises:get_file_info.PathOutsideSandboxError",
    "raises:file_exists.PathOutsideSandboxError",
    "raises:delete_file.PathOutsideSandboxError",
    "raises:make_directory.PathOutsideSandboxError",
)
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
            outside = {op for op, (kind, _) in outcomes.items() if kind == "outside"}
            assert outside in (set(), set(outcomes)), (
                f"{where}: only {sorted(outside)} say the path is outside the sandbox; the others reach it: "
                f"{ {op: kind for op, (kind, _) in outcomes.items()} }"
            )
            if outside:
                continue
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
