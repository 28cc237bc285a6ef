"""Attacks on the local provider's file operations through symlinks the sandbox plants in its workspace:
an existence oracle for host paths, and a symlink swap racing every file operation (both isolation modes;
with isolation "none" the sandbox is no boundary for its commands, but file operations must still never act
outside the workspace)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _attacks import (
    CANARY_ONLY,
    CANARY_SECRET,
    SANDBOX_SECRET,
    Canary,
    local_sandbox,
    prepare_swap,
    run,
    swapping,
)

from grainchain.errors import FileNotFoundInSandboxError, GrainchainError, PathOutsideSandboxError

ISOLATIONS = ["namespaces", "none"]
TRIES = 5000
SECONDS = 3.0  # per operation and isolation mode


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_symlink_to_host_dir_is_no_existence_oracle(isolation: str, tmp_path: Path) -> None:
    """Plants `l -> <host-only directory>` and `n -> <missing host path>` and asks get_file_info and
    list_files about them; a vulnerable grainchain follows the link on the host and reports `l` as a
    directory (and `n` not), telling the sandbox which host paths exist. Operations through `l` must fail
    with a typed error and leave the host directory alone."""
    host_dir = tmp_path / "host-only"
    host_dir.mkdir()
    (host_dir / "inside").write_text("host file")
    missing = tmp_path / "missing"
    with local_sandbox(isolation) as sandbox:
        run(sandbox, f"ln -s {shlex.quote(str(host_dir))} l && ln -s {shlex.quote(str(missing))} n")
        infos = {name: sandbox.get_file_info(name) for name in ("l", "n")}
        listed = {entry.name: entry for entry in sandbox.list_files(".") if entry.name in ("l", "n")}
        through: dict[str, object] = {}
        operations: dict[str, Callable[[], Any]] = {
            "upload_file": lambda: sandbox.upload_file("l/x", b"planted"),
            "download_file": lambda: sandbox.download_file("l/inside"),
            "delete_file": lambda: sandbox.delete_file("l/inside"),
            "make_directory": lambda: sandbox.make_directory("l/newdir"),
            "list_files": lambda: sandbox.list_files("l"),
            "get_file_info": lambda: sandbox.get_file_info("l/inside"),
            "file_exists": lambda: sandbox.file_exists("l/inside"),
        }
        for name, operation in operations.items():
            try:
                through[name] = f"returned {operation()!r:.80}"
            except (PathOutsideSandboxError, FileNotFoundInSandboxError):
                pass
            except Exception as exc:  # reported below
                through[name] = f"raised {exc!r:.120}"
    problems = []
    for name, info in {**infos, **{f"listed {k}": v for k, v in listed.items()}}.items():
        if info.is_directory or not info.is_symlink:
            problems.append(f"{name}: is_directory={info.is_directory} is_symlink={info.is_symlink}")
    problems += [f"{name} through l {what}" for name, what in through.items()]
    if sorted(p.name for p in host_dir.iterdir()) != ["inside"]:
        problems.append(f"the host directory changed: {sorted(p.name for p in host_dir.iterdir())}")
    assert not problems, (
        "symlinks to host paths are followed on the host (l -> existing host dir, n -> missing path): "
        + "; ".join(problems)
    )


# operation -> (call(sandbox, try number), judge(result, canary) -> what escaped, or "")
Operation = tuple[Callable[[Any, int], Any], Callable[[Any, Canary], str]]


def _info_escape(info: Any, canary: Canary) -> str:
    if info.size == len(CANARY_SECRET):
        return f"reported the host file's size {info.size}"
    if abs(int(info.modified_time.timestamp() * 1e6) - canary.secret_mtime_ns // 1000) < 2:
        return "reported the host file's mtime"
    return ""


OPERATIONS: dict[str, Operation] = {
    "upload_file": (lambda s, i: s.upload_file(f"d/up{i}", b"uploaded"), lambda r, c: ""),
    "download_file": (
        lambda s, i: s.download_file("d/secret"),
        lambda r, c: "" if r == SANDBOX_SECRET else f"returned {r[:20]!r}... ({len(r)} bytes)",
    ),
    "delete_file": (lambda s, i: s.delete_file("d/victim"), lambda r, c: ""),
    "make_directory": (lambda s, i: s.make_directory(f"d/dir{i}"), lambda r, c: ""),
    "list_files": (
        lambda s, i: s.list_files("d"),
        lambda r, c: "listed the host-only name" if any(e.name == CANARY_ONLY for e in r) else "",
    ),
    "get_file_info": (lambda s, i: s.get_file_info("d/secret"), _info_escape),
    "file_exists": (
        lambda s, i: s.file_exists(f"d/{CANARY_ONLY}"),
        lambda r, c: "found the host-only name" if r else "",
    ),
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_symlink_swap_race(operation: str, isolation: str, tmp_path: Path) -> None:
    """Races one file operation on `d/...` against a process in the sandbox that keeps exchanging the
    real directory `d` with a symlink to a host canary directory (renameat2 RENAME_EXCHANGE). A vulnerable
    grainchain checks the path, then acts on it after the swap: it writes, deletes, creates or lists in
    the host directory, or returns the host file's content or metadata; or it leaks an untyped OSError."""
    call, judge = OPERATIONS[operation]
    canary = Canary(tmp_path / "canary")
    tries = typed = 0
    escapes: list[str] = []
    untyped: list[str] = []
    with local_sandbox(isolation) as sandbox:
        prepare_swap(sandbox, canary.root)
        with swapping(sandbox):
            started = time.monotonic()
            while tries < TRIES and time.monotonic() - started < SECONDS:
                tries += 1
                escaped = ""
                try:
                    escaped = judge(call(sandbox, tries), canary)
                except GrainchainError:
                    typed += 1
                except Exception as exc:  # an untyped error is a finding
                    untyped.append(repr(exc))
                found = ([escaped] if escaped else []) + canary.damage()
                if found:
                    escapes.append(f"try {tries}: {', '.join(found)}")
            elapsed = time.monotonic() - started
    print(f"{operation} isolation={isolation}: {tries} tries in {elapsed:.1f}s, {typed} typed errors")
    assert len(escapes) + len(untyped) == 0, (
        f"{operation} (isolation={isolation}) raced by a symlink swap: {len(escapes)} escapes to the host, "
        f"{len(untyped)} untyped errors in {tries} tries ({typed} typed errors, {elapsed:.1f}s); "
        f"escapes e.g. {escapes[:3]}; untyped e.g. {sorted(set(untyped))[:2]}"
    )
