"""`/__modal/.bin/modal-sandbox-fs-tools` of every fake sandbox: what the SDK's `sb.filesystem` execs with
one JSON command argument (ListFiles, MakeDirectory, ReadFile, WriteFile from stdin, Remove, Stat). Output
on stdout; an error is exit status 1 with a JSON payload on stderr, whose `error_kind` the SDK maps to its
SandboxFilesystem*Error classes. Watch answers NotSupported (the SDK: InvalidError).

Adapted from Modal's mock of the Rust tool, py/test/supports/mock_sandbox_fs_tools.py in
github.com/modal-labs/modal-client (Apache-2.0). The fake copies this file into each sandbox behind a
`#!` line naming the host's Python."""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import sys
from typing import Any, NoReturn


def fail(kind: str, message: str, detail: str | None = None) -> NoReturn:
    payload = {"version": 1, "error_kind": kind, "message": message}
    if detail is not None:
        payload["detail"] = detail
    sys.stderr.write(json.dumps(payload))
    raise SystemExit(1)


def entry(name: str, path: str, st: os.stat_result) -> dict[str, Any]:
    """A FileEntry, as the Rust tool's `build_file_entry` makes it."""
    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "file"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    found: dict[str, Any] = {
        "name": name,
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": st.st_mode,
        "permissions": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": owner,
        "group": group,
        "modified_time": st.st_mtime,
    }
    if kind == "symlink":
        found["symlink_target"] = os.readlink(path)
    return found


def list_files(path: str) -> None:
    try:
        os.stat(path)
    except NotADirectoryError:
        fail("NotDirectory", "a component of the path is not a directory")
    except PermissionError:
        fail("PermissionDenied", "permission denied")
    except OSError:
        fail("NotFound", "path does not exist")
    if not os.path.isdir(path):
        fail("IsFile", "expected a directory path")
    entries = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        try:
            entries.append(entry(name, os.path.abspath(full), os.lstat(full)))
        except OSError:
            continue
    sys.stdout.write(json.dumps(entries))


def make_directory(path: str, parents: bool) -> None:
    try:
        if parents:
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
    except FileExistsError:
        fail("PathAlreadyExists", "path already exists")
    except FileNotFoundError:
        fail("NotFound", "parent directory does not exist")
    except NotADirectoryError:
        fail("NotDirectory", "a component of the path is not a directory")
    except PermissionError:
        fail("PermissionDenied", "permission denied")


def read_file(path: str) -> None:
    if not os.path.exists(path):
        fail("NotFound", "path does not exist")
    if os.path.isdir(path):
        fail("IsDirectory", "expected a file path")
    try:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, sys.stdout.buffer)
    except PermissionError:
        fail("PermissionDenied", "permission denied")


def write_file(path: str) -> None:
    if os.path.isdir(path):
        fail("IsDirectory", "expected a file path")
    parent = os.path.dirname(path)
    if parent:
        if os.path.exists(parent) and not os.path.isdir(parent):
            fail("AlreadyExists", "a component of the path is not a directory")
        try:
            os.makedirs(parent, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            fail("NotDirectory", "a component of the path is not a directory")
        except PermissionError:
            fail("PermissionDenied", "permission denied")
    try:
        with open(path, "wb") as target:
            shutil.copyfileobj(sys.stdin.buffer, target)
    except PermissionError:
        fail("PermissionDenied", "permission denied")


def remove(path: str, recursive: bool) -> None:
    if not os.path.lexists(path):
        fail("NotFound", "path does not exist")
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            os.remove(path)
        elif recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    except PermissionError:
        fail("PermissionDenied", "permission denied")
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            fail("DirectoryNotEmpty", "directory is not empty")
        fail("Io", str(e))


def stat_path(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        fail("NotFound", "path does not exist")
    except NotADirectoryError:
        fail("NotDirectory", "a component of the path is not a directory")
    except PermissionError:
        fail("PermissionDenied", "permission denied")
    except OSError as e:
        fail("Io", "I/O error", detail=str(e))
    sys.stdout.write(json.dumps(entry(os.path.basename(path.rstrip("/")), path, st)))


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: modal-sandbox-fs-tools <command-json>")
    command: dict[str, dict[str, Any]] = json.loads(argv[1])
    (kind, args), *_ = command.items()
    path = args["path"]
    if kind == "ListFiles":
        list_files(path)
    elif kind == "MakeDirectory":
        make_directory(path, args.get("parents", True))
    elif kind == "ReadFile":
        read_file(path)
    elif kind == "WriteFile":
        write_file(path)
    elif kind == "Remove":
        remove(path, args.get("recursive", False))
    elif kind == "Stat":
        stat_path(path)
    else:
        fail("NotSupported", f"{kind} is not supported by the fake")


if __name__ == "__main__":
    main(sys.argv)
