"""Sandbox paths walked by directory descriptors, and live trees copied by them (flavour-free, Linux).

A sandbox's commands change its workspace while grainchain works on it. Checking a path and then opening
it again by name lets a command swap a checked directory for a symlink in between (renameat2
RENAME_EXCHANGE makes the window easy to hit), and the host then follows the link out of the workspace.
So nothing here opens a sandbox path by name:

* File operations walk every path from a descriptor of the view's root (opened afresh per operation:
  restores remount the workspace and restart the holder), one component at a time with openat(O_NOFOLLOW) (O_PATH for the
  directories on the way, so their modes do not matter), and act on the last component relative to its
  directory's descriptor. Symlinks are followed by us the way the sandbox sees them: an absolute target is
  a sandbox path, which must lie below the view root, and is walked again from the root descriptor; `..`
  from a link target pops our own stack of descriptors (never `..` on the filesystem; at the root of a
  view of the whole sandbox, `..` stays there, as the kernel's); more than MAX_LINKS
  links is an error. Before that, the user's path is normalised lexically against the working directory
  (`link/..` is the directory holding `link`). An entry that changes type between two steps makes the
  walk start over, a few times, then the operation raises a typed error.
* Tree copies and sizes of live trees (a copy snapshot of the workspace, a busy sandbox's upper layer, its
  /tmp) walk with directory descriptors, open each entry with O_NOFOLLOW relative to its directory, copy
  descriptor to descriptor and recreate links from readlinkat: a link is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

from grainchain.errors import (
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    PermissionDeniedError,
    ProviderError,
)
from grainchain.models import FileInfo

PROVIDER = "local"
MAX_LINKS = 40  # as the kernel's limit on symlinks followed in one lookup
_ATTEMPTS = 8  # walks of one operation while entries keep changing type under us
_SPINS = 8  # directories created on the way that vanish again, per walk

_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory on the way
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # to list it
# O_NONBLOCK: opening a named pipe nobody writes or reads must fail or return, never hang us
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOT_THERE = (errno.ENOTDIR, errno.ELOOP)  # openat(O_DIRECTORY|O_NOFOLLOW) of a link or a file
# a read-only mount, permissions, an entry the kernel lets nobody change (procfs, a busy mount point)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EBUSY)

T = TypeVar("T")


@dataclass(frozen=True)
class View:
    """What paths are walked in: `host` is its directory on the host, `root` where the sandbox's commands
    see it. The workspace (`root` /workspace when isolated, else the host path itself: working
    directories must lie there), or the whole sandbox (`root` "/": file operations, which reach what
    commands reach). `open_root` opens the root's descriptor (default: `host` by name), e.g. through
    /proc/<holder>/root: the holder's mount namespace, where the sandbox's mounts are."""

    host: Path
    root: str
    open_root: Callable[[], int] | None = field(default=None, compare=False)

    @property
    def whole(self) -> bool:
        """The view is the whole filesystem its commands see: nothing is above its root."""
        return self.root == "/"


def _open_root(view: View) -> int | None:
    """The view root's descriptor, None when it is gone."""
    if view.open_root is not None:
        return view.open_root()
    try:
        return os.open(view.host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _normalise(view: View, cwd: str, path: str) -> tuple[str, list[str]]:
    """(shown path, components below the view root) of a user's path, by name only."""
    shown = posixpath.normpath(posixpath.join(cwd, path))
    if shown.startswith("//"):
        shown = shown[1:]
    if not _within(shown, view.root):
        raise PathOutsideSandboxError(
            path, f"it resolves to {shown}, outside the sandbox's workspace {view.root}", provider=PROVIDER
        )
    return shown, [c for c in shown[len(view.root) :].split("/") if c]


# -- outcomes of a walk -----------------------------------------------------------------------------------


class _Gone(Exception):
    """What the path names, or a directory on the way, does not exist."""


class _NotDir(Exception):
    """Something on the way is not a directory."""


class _IsLink(Exception):
    """Raised by an operation's last step: the last component is a symlink, to be followed."""


class _Changed(Exception):
    """An entry changed type between two steps: walk again; `outcome` is the answer if it keeps changing."""

    def __init__(self, outcome: Exception) -> None:
        super().__init__()
        self.outcome = outcome


Step = Callable[["_Walk", "str | None"], T]


class _Walk:
    """One resolution: a stack of directory descriptors from the workspace root's (at the bottom, borrowed)
    and the names of those directories (for the host path). `..` pops the stack; every descriptor opened is
    closed by close()."""

    def __init__(
        self, view: View, path: str, root: int, start: tuple[list[int], list[str]] | None = None
    ) -> None:
        self.view = view
        self.path = path  # the user's, for messages
        self.root = root
        # -1: below a missing directory (lenient walks); names[i] is the name of fds[i + 1]
        self.fds = [root] if start is None else list(start[0])
        self.names: list[str] = [] if start is None else list(start[1])
        self.links = 0
        self.spins = 0
        self.opened: list[int] = []

    def close(self) -> None:
        for fd in self.opened:
            os.close(fd)
        self.opened.clear()

    @property
    def dir(self) -> int:
        return self.fds[-1]

    def host(self, name: str | None = None) -> Path:
        """The host path of the current directory (or of `name` in it), every link on the way resolved."""
        return self.view.host.joinpath(*self.names, *([] if name is None else [name]))

    def run(
        self,
        components: list[str],
        last: Step[T],
        *,
        follow: bool,
        create: bool = False,
        lenient: bool = False,
    ) -> T:
        """Walk `components` and return last(self, name) for the final one (None: the path ends at the
        current directory). `follow`: a final symlink is followed (last() raises _IsLink on finding one);
        `create`: missing directories on the way are made; `lenient`: a missing directory or a file on the
        way is walked by name (nothing below it can be a link)."""
        pending = components[::-1]
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                self._up()
                continue
            if self.dir < 0:
                self._push(-1, name)
                continue
            if not pending:
                try:
                    return last(self, name)
                except _IsLink:
                    if not follow:
                        raise _Changed(_Gone()) from None
                    self._follow(name, pending, lenient)
                    continue
            self._enter(name, pending, create=create, lenient=lenient)
        return last(self, None)

    def _push(self, fd: int, name: str) -> None:
        self.fds.append(fd)
        self.names.append(name)

    def _up(self) -> None:
        if len(self.fds) == 1:
            if self.view.whole:
                return  # `..` of `/` is `/`
            raise PathOutsideSandboxError(
                self.path,
                f"a symlink on the way leads above the workspace {self.view.root}",
                provider=PROVIDER,
            )
        self.fds.pop()
        self.names.pop()

    def _enter(self, name: str, pending: list[str], *, create: bool, lenient: bool) -> None:
        try:
            fd = os.open(name, _DIR_PATH, dir_fd=self.dir)
        except FileNotFoundError:
            if lenient:
                self._push(-1, name)
            elif create:
                self._mkdir(name)
                pending.append(name)  # and enter it (or whatever got there first)
            else:
                raise _Gone from None
            return
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise
            self._follow(name, pending, lenient, on_the_way=True)
            return
        self.opened.append(fd)
        self._push(fd, name)

    def _mkdir(self, name: str) -> None:
        self.spins += 1
        if self.spins > _SPINS:
            raise _Changed(_Gone())
        try:
            os.mkdir(name, 0o777, dir_fd=self.dir)
        except FileExistsError:
            pass  # made meanwhile: entered next
        except FileNotFoundError:
            _no_new_entries(self.dir, self.path)
            raise _Changed(_Gone()) from None  # our directory was deleted under us

    def _follow(self, name: str, pending: list[str], lenient: bool, *, on_the_way: bool = False) -> None:
        """Splice the target of the symlink `name` into `pending`. On the way, `name` was no directory: a
        file is an answer (_NotDir), anything else changed since."""
        try:
            target = os.readlink(name, dir_fd=self.dir)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            if not on_the_way or exc.errno == errno.ENOENT:
                raise _Changed(_Gone()) from None
            kind = _kind(self.dir, name)
            if kind in (stat.S_IFDIR, stat.S_IFLNK):
                raise _Changed(_NotDir()) from None
            if kind is None:
                raise _Changed(_Gone()) from None
            if lenient:
                self._push(-1, name)
                return
            raise _NotDir from None
        self.links += 1
        if self.links > MAX_LINKS:
            raise InvalidArgumentError(
                f"too many levels of symbolic links in {self.path!r}", argument="path", provider=PROVIDER
            )
        root = self.view.root
        if target.startswith("/"):  # a sandbox path: walked from the workspace root
            target = posixpath.normpath(target)
            if not _within(target, root):
                raise PathOutsideSandboxError(
                    self.path,
                    f"a symlink on the way leads to {target}, outside the sandbox's workspace {root}",
                    provider=PROVIDER,
                )
            del self.fds[1:]
            self.names.clear()
            target = target[len(root) :]
        pending.extend(reversed([c for c in target.split("/") if c]))


def _no_new_entries(dir_fd: int, path: str) -> None:
    """After ENOENT from creating an entry: a directory that still exists is one whose file system lets
    nobody create entries (procfs, sysfs: a command's mkdir fails there too), else it was deleted."""
    if os.fstat(dir_fd).st_nlink > 0:
        raise PermissionDeniedError(
            path, "this file system lets nobody create entries here", provider=PROVIDER
        )


def _kind(dir_fd: int, name: str) -> int | None:
    """S_IFMT of `name` in the directory (not following a link), None when it is gone."""
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def _operate(
    view: View,
    cwd: str,
    path: str,
    last: Callable[[_Walk, str | None, str], T],
    *,
    follow: bool,
    gone: Callable[[str], T],
    not_dir: Callable[[str], T],
    create: bool = False,
) -> T:
    """Run one file operation: walk the path from a fresh descriptor of the workspace root and call
    last(walk, name, shown); walks again while entries change type under us. gone() / not_dir() give the
    answer (or raise) when the path, or a directory on the way, is missing / not a directory."""
    shown, components = _normalise(view, cwd, path)
    root = _open_root(view)
    if root is None:
        return gone(shown)
    outcome: Exception = _Gone()
    try:
        for _ in range(_ATTEMPTS):
            walk = _Walk(view, path, root)
            try:
                return walk.run(
                    components, lambda w, name: last(w, name, shown), follow=follow, create=create
                )
            except _Changed as changed:
                outcome = changed.outcome
            except (_Gone, _NotDir) as exc:
                outcome = exc
                break
            except OSError as exc:
                if exc.errno in _REFUSED:  # the sandbox refuses it, as it would refuse a command
                    raise PermissionDeniedError(
                        shown,
                        exc.strerror or errno.errorcode.get(exc.errno or 0, "refused"),
                        provider=PROVIDER,
                    ) from exc
                raise
            finally:
                walk.close()
    finally:
        os.close(root)
    return not_dir(shown) if isinstance(outcome, _NotDir) else gone(shown)


def _not_found(shown: str) -> NoReturn:
    raise FileNotFoundInSandboxError(shown, provider=PROVIDER)


def _exists_as_non_directory(shown: str) -> NoReturn:
    raise InvalidArgumentError(
        f"{shown} (or a parent) exists and is not a directory", argument="path", provider=PROVIDER
    )


def _parent_not_a_directory(shown: str) -> NoReturn:
    _exists_as_non_directory(posixpath.dirname(shown))


def _false(shown: str) -> bool:
    return False


def _not_regular(shown: str, st: os.stat_result, operation: str) -> InvalidArgumentError:
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    hint = (
        "; list_files() lists it" if stat.S_ISDIR(st.st_mode) else f" (only regular files can be {operation})"
    )
    return InvalidArgumentError(f"{shown} is {what}{hint}", argument="path", provider=PROVIDER)


def _no_pipe(shown: str, operation: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{shown} is not a regular file (only regular files can be {operation})",
        argument="path",
        provider=PROVIDER,
    )


# -- paths without acting on them -------------------------------------------------------------------------


def resolve(view: View, cwd: str, path: str, *, follow_symlinks: bool = True) -> tuple[Path, str]:
    """(host path, shown path) of a user's path, links resolved as the sandbox sees them; what does not
    exist (yet) is taken by name. Only for paths handed to something outside our control (a working
    directory): a file operation must act through its walk, never reopen a returned host path."""
    shown, components = _normalise(view, cwd, path)

    def last(w: _Walk, name: str | None) -> Path:
        if name is not None and follow_symlinks and w.dir >= 0 and _kind(w.dir, name) == stat.S_IFLNK:
            raise _IsLink
        return w.host(name)

    root = _open_root(view)
    if root is None:
        return view.host.joinpath(*components), shown
    try:
        for _ in range(_ATTEMPTS):
            walk = _Walk(view, path, root)
            try:
                return walk.run(components, last, follow=True, lenient=True), shown
            except _Changed:
                continue
            finally:
                walk.close()
    finally:
        os.close(root)
    _not_found(shown)


def directory(view: View, cwd: str, path: str) -> tuple[Path, str]:
    """(host path, shown path) of an existing directory; FileNotFoundInSandboxError for anything else."""

    def last(w: _Walk, name: str | None, shown: str) -> tuple[Path, str]:
        if name is None:
            return w.host(), shown
        try:
            os.close(os.open(name, _DIR_PATH, dir_fd=w.dir))
        except FileNotFoundError:
            raise _Gone from None
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise
            kind = _kind(w.dir, name)
            if kind == stat.S_IFLNK:
                raise _IsLink from None
            if kind == stat.S_IFDIR:
                raise _Changed(_Gone()) from None
            raise _Gone from None
        return w.host(name), shown

    return _operate(view, cwd, path, last, follow=True, gone=_not_found, not_dir=_not_found)


# -- file operations --------------------------------------------------------------------------------------


def read_file(view: View, cwd: str, path: str) -> bytes:
    def last(w: _Walk, name: str | None, shown: str) -> bytes:
        try:
            fd = os.open("." if name is None else name, _FILE_READ, dir_fd=w.dir)
        except FileNotFoundError:
            raise _Gone from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _IsLink from None
            if exc.errno == errno.ENXIO:  # a socket
                raise _no_pipe(shown, "read") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(shown, st, "read")
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read()

    return _operate(view, cwd, path, last, follow=True, gone=_not_found, not_dir=_not_found)


def write_file(view: View, cwd: str, path: str, data: bytes, *, append: bool) -> None:
    """Write (or append to) a regular file, creating its parent directories. The file is replaced
    atomically: the new content (with `append`, the old content and then the new) goes into a temporary
    file in the same directory, is fsynced and renamed over the name, so a client killed midway leaves the
    old content or the new one, never a mix (see _replace). An existing file keeps its permission bits
    (not setuid / setgid) and, where we may set it, its owner; hard links to it keep the old content."""

    def last(w: _Walk, name: str | None, shown: str) -> None:
        if name is None:
            raise InvalidArgumentError(f"{shown} is a directory", argument="path", provider=PROVIDER)
        try:
            old: os.stat_result | None = os.stat(name, dir_fd=w.dir, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None:
            if stat.S_ISLNK(old.st_mode):
                raise _IsLink
            if stat.S_ISDIR(old.st_mode):
                raise InvalidArgumentError(f"{shown} is a directory", argument="path", provider=PROVIDER)
            if not stat.S_ISREG(old.st_mode):
                raise _not_regular(shown, old, "written")
        _replace(w.dir, name, data, old, append=append)

    _operate(
        view, cwd, path, last, follow=True, create=True, gone=_not_found, not_dir=_parent_not_a_directory
    )


_TEMP_PREFIX = ".grainchain-upload-"
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20000000 | os.O_DIRECTORY)
_tmpfile_unsupported: set[int] = set()  # devices where O_TMPFILE failed once: a named temporary file there


def _temp_name() -> str:
    return f"{_TEMP_PREFIX}{os.urandom(8).hex()}"


def _open_temp(dir_fd: int) -> tuple[int, str | None]:
    """A new, empty file in the directory: unnamed (O_TMPFILE: a client killed before the rename leaves
    nothing behind) where the filesystem can, else under a fresh hidden name (None: unnamed)."""
    device = os.fstat(dir_fd).st_dev
    if device not in _tmpfile_unsupported and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(".", _O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dir_fd), None
        except FileNotFoundError:
            raise _Changed(_Gone()) from None  # the directory was deleted under us
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            _tmpfile_unsupported.add(device)
    for _ in range(_ATTEMPTS):
        name = _temp_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, flags, 0o666, dir_fd=dir_fd), name
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise _Changed(_Gone()) from None
    raise ProviderError("could not make a temporary file for the upload", provider=PROVIDER)


def _link_temp(fd: int, dir_fd: int) -> str:
    """Give an unnamed (O_TMPFILE) file a fresh hidden name in its directory, for the rename."""
    for _ in range(_ATTEMPTS):
        name = _temp_name()
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return name
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise _Changed(_Gone()) from None
    raise ProviderError("could not name the upload's temporary file", provider=PROVIDER)


def _copy_old(dir_fd: int, name: str, dst: int) -> None:
    """Append mode: the current content of `name` (a regular file, never through a link) first."""
    try:
        src = os.open(name, _FILE_READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return  # deleted meanwhile: an append to nothing
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # swapped for a link, a socket
            raise _Changed(_Gone()) from None
        raise
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise _Changed(_Gone())
        if st.st_size:
            pair = (st.st_dev, os.fstat(dst).st_dev)
            try:
                fcntl.ioctl(dst, _FICLONE, src)  # share the extents where the filesystem can
            except OSError:
                _pump(src, dst, None, pair)
        os.lseek(dst, 0, os.SEEK_END)
    finally:
        os.close(src)


def _write_in_place(dir_fd: int, name: str, data: bytes, *, append: bool) -> None:
    """Truncate (unless appending) and write an existing regular file (never through a link)."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags | (os.O_APPEND if append else 0), dir_fd=dir_fd)
    except FileNotFoundError:
        raise _Changed(_Gone()) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise _Changed(_Gone()) from None  # swapped for a link, a pipe: walked again
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Changed(_Gone())
        if not append:
            os.ftruncate(fd, 0)
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)


def _replace(dir_fd: int, name: str, data: bytes, old: os.stat_result | None, *, append: bool) -> None:
    """Put `data` (after the old content when appending) under `name` in the directory, atomically: temp
    file, write, fsync, renameat over the name, fsync of the directory. Everything is relative to the
    walked directory's descriptor; the rename replaces whatever entry `name` is then (a link swapped in
    meanwhile is replaced, never followed). A directory we may not write in (a non-root client, a
    sandbox's `chmod -w`) takes no new entry: an existing file is then written in place, as before."""
    try:
        fd, temp = _open_temp(dir_fd)
    except PermissionError:
        if old is None:
            raise
        _write_in_place(dir_fd, name, data, append=append)
        return
    try:
        if append and old is not None:
            _copy_old(dir_fd, name, fd)
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest) :]
        if old is not None:
            _own(old, lambda uid, gid: os.fchown(fd, uid, gid))
            os.fchmod(fd, stat.S_IMODE(old.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
        os.fsync(fd)
        if temp is None:
            temp = _link_temp(fd, dir_fd)
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.ENOTDIR, errno.EEXIST):
                raise _Changed(_Gone()) from None  # a directory there now: walked again, then refused
            raise
        temp = None
    finally:
        os.close(fd)
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
    with contextlib.suppress(OSError):  # the rename itself on disk (a power loss, not only a kill)
        directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def make_directory(view: View, cwd: str, path: str) -> None:
    """mkdir -p."""

    def last(w: _Walk, name: str | None, shown: str) -> None:
        if name is None:
            return
        try:
            os.mkdir(name, 0o777, dir_fd=w.dir)
            return
        except FileExistsError:
            pass
        except FileNotFoundError:
            _no_new_entries(w.dir, shown)
            raise _Changed(_Gone()) from None
        kind = _kind(w.dir, name)
        if kind == stat.S_IFLNK:
            raise _IsLink
        if kind is None:
            raise _Changed(_Gone())
        if kind != stat.S_IFDIR:
            _exists_as_non_directory(shown)

    _operate(
        view, cwd, path, last, follow=True, create=True, gone=_not_found, not_dir=_exists_as_non_directory
    )


def _info(st: os.stat_result, shown: str) -> FileInfo:
    """The entry itself: a symlink is not followed (never a directory; its size is the link's own)."""
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileInfo(
        path=shown,
        name=posixpath.basename(shown),
        size=0 if is_dir else st.st_size,
        is_directory=is_dir,
        is_symlink=stat.S_ISLNK(st.st_mode),
        mode=stat.S_IMODE(st.st_mode),
        modified_time=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def file_info(view: View, cwd: str, path: str) -> FileInfo:
    """Metadata of the entry itself (a final symlink is not followed)."""

    def last(w: _Walk, name: str | None, shown: str) -> FileInfo:
        if name is None:
            return _info(os.fstat(w.dir), shown)
        try:
            st = os.stat(name, dir_fd=w.dir, follow_symlinks=False)
        except FileNotFoundError:
            raise _Gone from None
        return _info(st, shown)

    return _operate(view, cwd, path, last, follow=False, gone=_not_found, not_dir=_not_found)


def list_directory(view: View, cwd: str, path: str) -> list[FileInfo]:
    def last(w: _Walk, name: str | None, shown: str) -> list[FileInfo]:
        try:
            fd = os.open("." if name is None else name, _DIR_READ, dir_fd=w.dir)
        except FileNotFoundError:
            raise _Gone from None
        except OSError as exc:
            if name is None or exc.errno not in _NOT_THERE:
                raise
            kind = _kind(w.dir, name)
            if kind == stat.S_IFLNK:
                raise _IsLink from None
            if kind is None:
                raise _Gone from None
            if kind == stat.S_IFDIR:
                raise _Changed(_Gone()) from None
            raise InvalidArgumentError(
                f"{shown} is not a directory", argument="path", provider=PROVIDER
            ) from None
        w.opened.append(fd)
        infos = []
        for entry in sorted(os.listdir(fd)):
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while listing
            infos.append(_info(st, posixpath.join(shown, entry)))
        return infos

    return _operate(view, cwd, path, last, follow=True, gone=_not_found, not_dir=_not_found)


def exists(view: View, cwd: str, path: str) -> bool:
    """Whether the entry exists (a dangling symlink does)."""

    def last(w: _Walk, name: str | None, shown: str) -> bool:
        return name is None or _kind(w.dir, name) is not None

    return _operate(view, cwd, path, last, follow=False, gone=_false, not_dir=_false)


def delete(view: View, cwd: str, path: str) -> None:
    """Delete a file, a symlink (never its target) or a directory tree."""

    def last(w: _Walk, name: str | None, shown: str) -> None:
        if name is None:
            raise InvalidArgumentError(
                "cannot delete the sandbox's root directory", argument="path", provider=PROVIDER
            )
        try:
            os.unlink(name, dir_fd=w.dir)
        except FileNotFoundError:
            raise _Gone from None
        except IsADirectoryError:
            remove_tree_at(w.dir, name)

    _operate(view, cwd, path, last, follow=False, gone=_not_found, not_dir=_not_found)


# -- removing a tree --------------------------------------------------------------------------------------

_REMOVE_SPINS = 64  # entries that change under a removal (a process writing into the tree) before giving up


@dataclass
class _Doomed:
    """A directory being emptied: its parent's descriptor and its name there, its own, what is left."""

    parent: int
    name: str
    fd: int
    names: list[str]
    opened_up: bool = False  # u+rwx given already


def _open_up(fd: int) -> None:
    """u+rwx on a directory (through its descriptor: never a link)."""
    os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)


def _open_doomed(parent: int, name: str, above: _Doomed | None) -> _Doomed | None:
    """The directory `name` to empty; None when it is gone or no directory (any more). A directory without
    r or x for us (a non-root user's chmod 000), or below one without x, gets u+rwx."""
    for attempt in range(2):
        try:
            fd = os.open(name, _DIR_READ, dir_fd=parent)
        except FileNotFoundError:
            return None
        except PermissionError:
            if attempt:
                raise
            if above is not None and not above.opened_up:
                _open_up(above.fd)
                above.opened_up = True
            try:
                path_fd = os.open(name, _DIR_PATH, dir_fd=parent)
            except OSError:
                continue
            try:
                _open_up(path_fd)
            finally:
                os.close(path_fd)
            continue
        except OSError as exc:
            if exc.errno in _NOT_THERE:
                return None
            raise
        try:
            return _Doomed(parent, name, fd, os.listdir(fd))
        except BaseException:
            os.close(fd)
            raise
    return None


def remove_tree_at(parent: int, name: str) -> None:
    """rm -r of the directory `name` in the directory `parent`, by descriptors: no link is followed and
    nothing is reopened by path (shutil.rmtree opens directories without O_NOFOLLOW: a link swapped in
    could make it open a host FIFO and hang). Directories without write or search permission for us (a
    non-root user's `chmod -w`, Go's module cache) get u+rwx. Raises _Changed when `name` is not that
    directory any more."""
    top = _open_doomed(parent, name, None)
    if top is None:
        raise _Changed(_Gone())
    frames = [top]
    spins = 0

    def spin() -> None:
        nonlocal spins
        spins += 1
        if spins > _REMOVE_SPINS:
            raise ProviderError(
                f"{name} kept changing while it was deleted (a process of the sandbox writes into it); "
                "try again",
                provider=PROVIDER,
                retryable=True,
            )

    try:
        while frames:
            frame = frames[-1]
            if frame.names:
                child = frame.names[-1]
                try:
                    os.unlink(child, dir_fd=frame.fd)
                except FileNotFoundError:
                    pass
                except IsADirectoryError:
                    inner = _open_doomed(frame.fd, child, frame)
                    if inner is None:
                        spin()  # no directory any more: unlinked next round
                    else:
                        frame.names.pop()
                        frames.append(inner)
                    continue
                except PermissionError:
                    if frame.opened_up:
                        raise
                    _open_up(frame.fd)
                    frame.opened_up = True
                    continue
                frame.names.pop()
                continue
            above = frames[-2] if len(frames) > 1 else None
            try:
                os.rmdir(frame.name, dir_fd=frame.parent)
            except FileNotFoundError:
                pass
            except PermissionError:
                if above is None or above.opened_up:
                    raise
                _open_up(above.fd)
                above.opened_up = True
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # written into meanwhile: empty it again
                    spin()
                    frame.names = os.listdir(frame.fd)
                    continue
                if exc.errno != errno.ENOTDIR:
                    raise
                if above is None:  # `name` is something else now
                    raise _Changed(_Gone()) from None
                spin()
                above.names.append(frame.name)  # swapped for a non-directory: unlink that
            frames.pop()
            os.close(frame.fd)
    finally:
        for frame in frames:
            os.close(frame.fd)


# -- copying a tree ---------------------------------------------------------------------------------------

_FICLONE = 0x40049409  # ioctl: make dst share src's extents (btrfs, xfs with reflink, bcachefs ...)
_CHUNK = 1 << 30
# (source device, target device) pairs where a method failed once: the next one at once there
_no_reflink: set[tuple[int, int]] = set()
_no_copy_range: set[tuple[int, int]] = set()
_UNSUPPORTED = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


class _Swapped(Exception):
    """The entry is not what its lstat said any more: look again."""


@dataclass
class _Frame:
    src: int
    dst: int
    st: os.stat_result
    names: list[str]
    rel: str  # below the target's root, for hard links


@dataclass
class _Copier:
    whiteouts: bool
    sockets: bool
    dst_root: int = -1
    dst_dev: int = 0
    size: int = 0
    first_links: dict[tuple[int, int], str] = field(default_factory=dict)

    def run(self, src: Path, dst: Path, into: bool) -> None:
        frames: list[_Frame] = []
        src_fd = os.open(src, _DIR_READ)
        try:
            st = os.fstat(src_fd)
            names = os.listdir(src_fd)
            if not into:
                os.mkdir(dst, 0o700)
            dst_fd = os.open(dst, _DIR_READ)
        except BaseException:
            os.close(src_fd)
            raise
        frames.append(_Frame(src_fd, dst_fd, st, names, ""))
        self.dst_root, self.dst_dev = dst_fd, os.fstat(dst_fd).st_dev
        try:
            while frames:
                frame = frames[-1]
                if frame.names:
                    child = self._entry(frame, frame.names.pop())
                    if child is not None:
                        frames.append(child)
                    continue
                self._finish_directory(frame)  # after its contents: their creation changes its mtime
                frames.pop()
                os.close(frame.src)
                os.close(frame.dst)
        finally:
            for frame in frames:
                os.close(frame.src)
                os.close(frame.dst)

    def _entry(self, frame: _Frame, name: str) -> _Frame | None:
        for _ in range(3):
            try:
                st = os.stat(name, dir_fd=frame.src, follow_symlinks=False)
                kind = stat.S_IFMT(st.st_mode)
                if kind == stat.S_IFDIR:
                    return self._directory(frame, name)
                if kind == stat.S_IFREG:
                    self._file(frame, name)
                elif kind == stat.S_IFLNK:
                    self._symlink(frame, name, st)
                elif kind == stat.S_IFIFO:
                    self._node(frame, name, st, stat.S_IFIFO)
                elif kind == stat.S_IFCHR and st.st_rdev == 0 and self.whiteouts:
                    self._node(frame, name, st, stat.S_IFCHR)  # an overlayfs whiteout
                elif kind == stat.S_IFSOCK and self.sockets:
                    self._node(frame, name, st, stat.S_IFSOCK)
                # other sockets and device nodes hold no data that could be captured: left out
                return None
            except FileNotFoundError:
                return None  # deleted meanwhile
            except _Swapped:
                continue
        raise ProviderError(
            f"{posixpath.join(frame.rel, name)} kept changing type while it was copied; try again",
            provider=PROVIDER,
            retryable=True,
        )

    def _directory(self, frame: _Frame, name: str) -> _Frame:
        try:
            src = os.open(name, _DIR_READ, dir_fd=frame.src)
        except OSError as exc:
            if exc.errno in _NOT_THERE:
                raise _Swapped from None
            raise
        try:
            st = os.fstat(src)
            names = os.listdir(src)
            os.mkdir(name, 0o700, dir_fd=frame.dst)  # its own mode once filled (it may be read-only)
            dst = os.open(name, _DIR_READ, dir_fd=frame.dst)
        except BaseException:
            os.close(src)
            raise
        return _Frame(src, dst, st, names, posixpath.join(frame.rel, name))

    def _file(self, frame: _Frame, name: str) -> None:
        try:
            src = os.open(name, _FILE_READ, dir_fd=frame.src)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link or a socket now
                raise _Swapped from None
            raise
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise _Swapped
            if self._linked(frame, name, st):
                return
            dst = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=frame.dst,
            )
            try:
                self._data(src, dst, st)
                _own(st, lambda uid, gid: os.fchown(dst, uid, gid))
                _copy_xattrs(src, dst)
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
            self.size += st.st_size
            self._remember(frame, name, st)
        finally:
            os.close(src)

    def _symlink(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=frame.src)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise _Swapped from None
            raise
        if self._linked(frame, name, st):
            return
        os.symlink(target, name, dir_fd=frame.dst)
        self._metadata_by_name(frame, name, st, mode=False)
        self._remember(frame, name, st)

    def _node(self, frame: _Frame, name: str, st: os.stat_result, kind: int) -> None:
        if self._linked(frame, name, st):  # overlayfs makes whiteouts hard links of one another
            return
        if kind == stat.S_IFIFO:
            os.mkfifo(name, 0o600, dir_fd=frame.dst)
        else:
            os.mknod(name, kind | 0o600, 0, dir_fd=frame.dst)
        self._metadata_by_name(frame, name, st, mode=True)
        self._remember(frame, name, st)

    def _metadata_by_name(self, frame: _Frame, name: str, st: os.stat_result, *, mode: bool) -> None:
        """Owner, xattrs, mode and times of an entry we made in our target (no descriptor: links, pipes
        and nodes are never opened); the source's xattrs are read through its directory's descriptor."""
        _own(st, lambda uid, gid: os.chown(name, uid, gid, dir_fd=frame.dst, follow_symlinks=False))
        _copy_xattrs(f"/proc/self/fd/{frame.src}/{name}", f"/proc/self/fd/{frame.dst}/{name}")
        if mode:
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=frame.dst)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=frame.dst, follow_symlinks=False)

    def _finish_directory(self, frame: _Frame) -> None:
        st = frame.st
        _own(st, lambda uid, gid: os.fchown(frame.dst, uid, gid))
        _copy_xattrs(frame.src, frame.dst)  # overlayfs' trusted.overlay.opaque, .redirect on directories
        os.fchmod(frame.dst, stat.S_IMODE(st.st_mode))
        os.utime(frame.dst, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _linked(self, frame: _Frame, name: str, st: os.stat_result) -> bool:
        """A hard link to an entry copied before (links within the tree stay links); False: copy it."""
        if st.st_nlink < 2:
            return False
        first = self.first_links.get((st.st_dev, st.st_ino))
        if first is None:
            return False
        try:
            os.link(first, name, src_dir_fd=self.dst_root, dst_dir_fd=frame.dst, follow_symlinks=False)
        except OSError:  # too many links, a path too long: a copy of its own
            return False
        return True

    def _remember(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        if st.st_nlink > 1:
            self.first_links.setdefault((st.st_dev, st.st_ino), posixpath.join(frame.rel, name))

    def _data(self, src: int, dst: int, st: os.stat_result) -> None:
        if st.st_size == 0:
            return
        pair = (st.st_dev, self.dst_dev)
        if pair not in _no_reflink:
            try:
                fcntl.ioctl(dst, _FICLONE, src)  # share the extents: metadata only
                return
            except OSError:
                _no_reflink.add(pair)
        if st.st_blocks * 512 >= st.st_size:
            _pump(src, dst, None, pair)
            return
        # sparse: copy the data segments only (a sandbox's `truncate -s 1T` must not become a terabyte)
        pos = 0
        while pos < st.st_size:
            try:
                data = os.lseek(src, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                    raise
                break
            hole = os.lseek(src, data, os.SEEK_HOLE)
            os.lseek(src, data, os.SEEK_SET)
            os.lseek(dst, data, os.SEEK_SET)
            _pump(src, dst, hole - data, pair)
            pos = hole
        os.ftruncate(dst, st.st_size)


def _pump(src: int, dst: int, count: int | None, pair: tuple[int, int]) -> None:
    """Copy `count` bytes (None: up to the end) from src's position to dst's, in the kernel where it can:
    copy_file_range, else sendfile (e.g. across filesystems: remembered per pair), else read and write."""
    left = count  # None: until the end

    def run(step: Callable[[int], int]) -> None:
        nonlocal left
        while left is None or left > 0:
            done = step(_CHUNK if left is None else min(left, _CHUNK))
            if done == 0:
                left = 0
                return
            left = None if left is None else left - done

    def read_write(size: int) -> int:
        chunk = os.read(src, min(size, 1 << 20))
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        return len(chunk)

    kernel_steps = [] if pair in _no_copy_range else [partial(os.copy_file_range, src, dst)]
    for step in [*kernel_steps, partial(os.sendfile, dst, src, None)]:
        try:
            run(step)
            return
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            if kernel_steps and step is kernel_steps[0]:
                _no_copy_range.add(pair)  # e.g. across filesystems: straight to sendfile next time
    run(read_write)


def _own(st: os.stat_result, chown: Callable[[int, int], None]) -> None:
    """The source's owner where we may set it (as root; else only our own groups, like cp -a)."""
    try:
        chown(st.st_uid, st.st_gid)
    except PermissionError:
        with contextlib.suppress(PermissionError):
            chown(-1, st.st_gid)


def _copy_xattrs(src: int | str, dst: int | str) -> None:
    """Every extended attribute we can read (as root: trusted.*, which holds overlayfs' own); one that
    cannot be set is left out, as cp -a does. A str is a path whose last component is not followed."""
    by_name = isinstance(src, str)
    try:
        names = os.listxattr(src, follow_symlinks=False) if by_name else os.listxattr(src)
    except OSError:
        return
    for attribute in names:
        try:
            if isinstance(src, str) and isinstance(dst, str):
                value = os.getxattr(src, attribute, follow_symlinks=False)
                os.setxattr(dst, attribute, value, follow_symlinks=False)
            else:
                os.setxattr(dst, attribute, os.getxattr(src, attribute))
        except OSError:
            continue


def copy_tree(
    src: Path, dst: Path, *, into: bool = False, whiteouts: bool = False, sockets: bool = False
) -> int:
    """Copy the tree `src` to `dst` (a new directory; `into`: the existing, empty directory `dst`) exactly:
    contents (cloned where the filesystem has reflinks, holes kept), modes, owners (as root), times (a
    directory's after its contents), xattrs, symlinks as symlinks, hard links within the tree, named pipes;
    with `whiteouts` overlayfs' whiteouts (character devices 0/0), with `sockets` socket files. Other device
    nodes are left out. Safe on a tree the sandbox changes meanwhile: no link is followed, no entry reopened
    by path. Returns the bytes of its regular files."""
    copier = _Copier(whiteouts=whiteouts, sockets=sockets)
    try:
        copier.run(src, dst, into)
    except OSError as exc:
        raise ProviderError(f"copying {src} failed: {exc}", provider=PROVIDER) from exc
    return copier.size


def tree_size(path: Path) -> int:
    """Bytes of the regular files below `path`, by descriptors (never following a link); what cannot be
    read, or vanishes meanwhile, counts nothing."""
    try:
        fd = os.open(path, _DIR_READ)
    except OSError:
        return 0
    total = 0
    frames: list[tuple[int, list[str]]] = []
    try:
        try:
            frames.append((fd, os.listdir(fd)))
        except OSError:
            os.close(fd)
            return 0
        while frames:
            fd, names = frames[-1]
            if not names:
                frames.pop()
                os.close(fd)
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            elif stat.S_ISDIR(st.st_mode):
                try:
                    child = os.open(name, _DIR_READ, dir_fd=fd)
                except OSError:
                    continue
                try:
                    frames.append((child, os.listdir(child)))
                except OSError:
                    os.close(child)
    finally:
        for fd, _ in frames:
            os.close(fd)
    return total


# -- whole directories (upload_directory / download_directory) ------------------------------------------


def _not_a_directory(shown: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{shown} is not a directory", argument="sandbox_path", provider=PROVIDER)


def with_directory(view: View, cwd: str, path: str, use: Callable[[int], T]) -> T:
    """use(fd) with a descriptor (O_RDONLY, opened O_NOFOLLOW) of the existing directory at `path`, links on
    the way followed as the sandbox sees them: FileNotFoundInSandboxError when missing, InvalidArgumentError
    when not a directory. Whatever `use` walks below it by descriptors stays in that directory."""

    def last(w: _Walk, name: str | None, shown: str) -> T:
        try:
            fd = os.open("." if name is None else name, _DIR_READ, dir_fd=w.dir)
        except FileNotFoundError:
            raise _Gone from None
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise
            kind = None if name is None else _kind(w.dir, name)
            if kind == stat.S_IFLNK:
                raise _IsLink from None
            if kind is None:
                raise _Changed(_Gone()) from None
            if kind == stat.S_IFDIR:
                raise _Changed(_Gone()) from None
            raise _not_a_directory(shown) from None
        try:
            return use(fd)
        finally:
            os.close(fd)

    def not_dir(shown: str) -> T:
        raise _not_a_directory(posixpath.dirname(shown))

    return _operate(view, cwd, path, last, follow=True, gone=_not_found, not_dir=not_dir)


def fill_directory(view: View, cwd: str, path: str, fill: Callable[[int], None]) -> None:
    """Make the directory at `path` (and its parents) with what fill(fd) puts into a fresh hidden directory
    beside it (given as a descriptor), renamed onto `path` at the end: all or nothing. `path` must be missing
    or an empty directory (a link to one is followed), else InvalidArgumentError and nothing changes; a
    sandbox filling it meanwhile makes the rename fail the same way (the hidden directory is removed)."""

    def last(w: _Walk, name: str | None, shown: str) -> None:
        if name is None:  # the view's root, or `.` of the working directory: by its name in its parent
            raise InvalidArgumentError(
                f"{shown} is the root of the view or the working directory, which cannot be replaced "
                "(name a missing or empty directory below it)",
                argument="sandbox_path",
                provider=PROVIDER,
            )
        try:
            old: os.stat_result | None = os.stat(name, dir_fd=w.dir, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None:
            if stat.S_ISLNK(old.st_mode):
                raise _IsLink
            if not stat.S_ISDIR(old.st_mode):
                raise InvalidArgumentError(
                    f"{shown} exists and is not a directory (a missing or empty one is needed)",
                    argument="sandbox_path",
                    provider=PROVIDER,
                )
            probe = os.open(name, _DIR_READ, dir_fd=w.dir)
            try:
                empty = not os.listdir(probe)
            finally:
                os.close(probe)
            if not empty:
                raise _full(shown)
        hidden = _temp_name()
        os.mkdir(hidden, 0o777, dir_fd=w.dir)  # (the umask applies, as to make_directory)
        try:
            fd = os.open(hidden, _DIR_READ, dir_fd=w.dir)
            try:
                fill(fd)
            finally:
                os.close(fd)
            try:  # rename(2) replaces an empty directory, atomically
                os.rename(hidden, name, src_dir_fd=w.dir, dst_dir_fd=w.dir)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise _full(shown) from None
                raise
        except BaseException:
            with contextlib.suppress(OSError, _Changed):
                remove_tree_at(w.dir, hidden)
            raise

    _operate(
        view, cwd, path, last, follow=True, create=True, gone=_not_found, not_dir=_parent_not_a_directory
    )


def _full(shown: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{shown} is a directory that is not empty (a missing or empty one is needed; delete_file() it first "
        "to replace it)",
        argument="sandbox_path",
        provider=PROVIDER,
    )
