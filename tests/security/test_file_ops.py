"""Attacks on the local provider's file operations through symlinks the sandbox plants: an existence oracle
for host paths, and a symlink swap racing every file operation. File operations reach exactly what the
sandbox's commands reach (convention:paths: the holder's root, its mounts included); the attack is reaching
a host file the commands cannot: here a canary under the host's /tmp (the sandbox has a private /tmp, so a
link to the canary's path leads to nothing, or to the sandbox's own files of that name).

Isolated sandboxes only: with isolation "none" commands run on the host as the client's user, so file
operations act on the host's files as commands do (docs/security.md); there is nothing to escape to.
tests/test_local_confined.py breaks the root on purpose (the host's `/` in an isolated sandbox) and sees
these attacks succeed."""

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

from grainchain.errors import GrainchainError

ISOLATIONS = ["namespaces"]
TRIES = 5000
SECONDS = 3.0  # per operation and isolation mode


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_symlink_to_host_dir_is_no_existence_oracle(isolation: str, tmp_path: Path) -> None:
    problems = _oracle(isolation, tmp_path)
    assert not problems, (
        "symlinks to host paths are followed on the host (l -> existing host dir, n -> missing path): "
        + "; ".join(problems)
    )


def test_the_attacks_catch_file_operations_rooted_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teeth of the tests above: an isolated sandbox whose file operations walk the host's `/` instead
    of the holder's root (the bug this design rules out) is caught by the oracle and by the swap race."""
    from grainchain.providers.local import _confined as confined
    from grainchain.providers.local._sync.adapter import LocalAdapter

    def on_the_host(self: Any, operation: Callable[[confined.View, str], Any]) -> Any:
        return operation(confined.View(Path("/"), "/"), str(self._box.workspace))  # as isolation "none"

    monkeypatch.setattr(LocalAdapter, "_on_files", on_the_host)
    assert _oracle("namespaces", tmp_path / "oracle"), "the oracle missed a root on the host"
    escapes, _, _ = _race("download_file", "namespaces", tmp_path / "race", seconds=1.0)
    assert escapes, "the swap race missed a root on the host"


def _oracle(isolation: str, tmp_path: Path) -> list[str]:
    """Plants `l -> <host-only directory>` and `n -> <missing host path>` and asks every file operation
    about them; a vulnerable grainchain follows the link on the host and reports `l/inside` (or `l` as a
    directory), telling the sandbox which host paths exist, or reads, writes or deletes there. Through `l`,
    every operation must answer what a command sees (nothing there: not found, or its own new files in the
    sandbox) and leave the host directory alone."""
    host_dir = tmp_path / "host-only"
    host_dir.mkdir(parents=True)
    (host_dir / "inside").write_text("host file")
    missing = tmp_path / "missing"
    with local_sandbox(isolation) as sandbox:
        run(sandbox, f"ln -s {shlex.quote(str(host_dir))} l && ln -s {shlex.quote(str(missing))} n")
        assert sandbox.execute("test -e l/inside").return_code != 0, "commands see the host directory"
        infos = {name: sandbox.get_file_info(name) for name in ("l", "n")}
        listed = {entry.name: entry for entry in sandbox.list_files(".") if entry.name in ("l", "n")}
        answers: dict[str, Callable[[], Any]] = {
            "download_file": lambda: sandbox.download_file("l/inside"),
            "get_file_info": lambda: sandbox.get_file_info("l/inside"),
            "file_exists": lambda: sandbox.file_exists("l/inside"),
            "list_files": lambda: [e.name for e in sandbox.list_files("l")],
            "delete_file": lambda: sandbox.delete_file("l/inside"),
            "upload_file": lambda: sandbox.upload_file("l/x", b"planted"),
            "make_directory": lambda: sandbox.make_directory("l/newdir"),
        }
        through: dict[str, object] = {}
        for name, operation in answers.items():
            try:
                through[name] = operation()
            except GrainchainError as exc:
                through[name] = type(exc).__name__
            except Exception as exc:  # untyped: reported below
                through[name] = f"untyped {exc!r:.120}"
    problems = []
    for name, info in {**infos, **{f"listed {k}": v for k, v in listed.items()}}.items():
        if info.is_directory or not info.is_symlink:
            problems.append(f"{name}: is_directory={info.is_directory} is_symlink={info.is_symlink}")
    expected = {
        "download_file": "FileNotFoundInSandboxError",
        "get_file_info": "FileNotFoundInSandboxError",
        "file_exists": False,
        "list_files": "FileNotFoundInSandboxError",
        "delete_file": "FileNotFoundInSandboxError",
    }
    problems += [
        f"{op} through l: {through[op]!r:.120}" for op, want in expected.items() if through[op] != want
    ]
    problems += [f"{op} through l: {through[op]!r:.120}" for op in ("upload_file", "make_directory")
                 if str(through[op]).startswith("untyped")]  # fmt: skip
    if sorted(p.name for p in host_dir.iterdir()) != ["inside"]:
        problems.append(f"the host directory changed: {sorted(p.name for p in host_dir.iterdir())}")
    return problems


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
    escapes, untyped, summary = _race(operation, isolation, tmp_path)
    assert len(escapes) + len(untyped) == 0, (
        f"{operation} (isolation={isolation}) raced by a symlink swap: {len(escapes)} escapes to the host, "
        f"{len(untyped)} untyped errors in {summary}; escapes e.g. {escapes[:3]}; "
        f"untyped e.g. {sorted(set(untyped))[:2]}"
    )


def _race(
    operation: str, isolation: str, tmp_path: Path, seconds: float = SECONDS
) -> tuple[list[str], list[str], str]:
    """(escapes, untyped errors, a summary) of one operation raced by the swapper for `seconds`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    call, judge = OPERATIONS[operation]
    canary = Canary(tmp_path / "canary")
    tries = typed = 0
    escapes: list[str] = []
    untyped: list[str] = []
    with local_sandbox(isolation) as sandbox:
        prepare_swap(sandbox, canary.root)
        with swapping(sandbox):
            started = time.monotonic()
            while tries < TRIES and time.monotonic() - started < seconds:
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
    summary = f"{tries} tries ({typed} typed errors, {elapsed:.1f}s)"
    print(f"{operation} isolation={isolation}: {summary}")
    return escapes, untyped, summary
