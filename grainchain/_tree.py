"""Directory trees as tar streams, for upload_directory / download_directory (flavour-free).

* `pack(dir_fd)` yields a GNU tar of a directory's contents in pieces of about CHUNK bytes, walking it by
  descriptors (openat with O_NOFOLLOW, readlinkat): a symlink is stored as a link, never followed, and
  memory stays flat whatever the tree's size. Sockets, pipes and devices are skipped with a warning; hard
  links are stored as separate files. Names that are not UTF-8 are stored as their bytes.
* `extract(stream, local_path)` unpacks a tar from a sandbox into a directory of the client's machine with
  tarfile's `tar_filter` and more (`_Filter`): nothing is ever written outside local_path (an absolute name is
  taken relative to it, `..`, a name through a symlink or a hard link to a file outside raises
  PathOutsideSandboxError), special files are skipped with a warning, owners are not restored, and the
  permission bits (0o777) are kept. Symlinks keep their target unchanged (a link is harmless until someone
  follows it; nothing here does).
* `local_source` / `local_target` check the client's side before the sandbox is asked.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from grainchain.errors import (
    InvalidArgumentError,
    PathOutsideSandboxError,
    PermissionDeniedError,
    ProviderError,
)

log = logging.getLogger("grainchain.directories")

CHUNK = 256 * 1024  # pieces of the stream, both ways
PROGRESS_EVERY = 64 * 1024 * 1024  # a progress line per this many bytes (INFO)
_BLOCK = tarfile.BLOCKSIZE
_ENCODING = "utf-8"
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KEPT_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE)


class Progress:
    """Counts the bytes of one transfer; logs a line per PROGRESS_EVERY bytes and one at the end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bytes = 0
        self.started = time.monotonic()
        self._next = PROGRESS_EVERY

    def add(self, count: int) -> None:
        self.bytes += count
        if self.bytes >= self._next:
            self._next += PROGRESS_EVERY
            log.info("%s: %.0f MiB so far", self.what, self.bytes / 2**20)

    def done(self) -> None:
        seconds = time.monotonic() - self.started
        log.info("%s: %.1f MiB in %.2f s", self.what, self.bytes / 2**20, seconds)


# -- the client's side ------------------------------------------------------------------------------------


def _refuse(operation: str, local_path: str | os.PathLike[str], problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"local_path {os.fspath(local_path)!r} {problem}", argument="local_path", operation=operation
    )


def local_source(local_path: str | os.PathLike[str], operation: str) -> int:
    """A descriptor of the existing directory local_path (the caller closes it); InvalidArgumentError
    for anything else. The path itself may be a symlink (the caller named it); nothing below is followed."""
    try:
        return os.open(os.fspath(local_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _refuse(operation, local_path, "does not exist (an existing directory is needed)") from None
    except NotADirectoryError:
        raise _refuse(operation, local_path, "is not a directory") from None
    except PermissionError as exc:
        raise _refuse(operation, local_path, f"cannot be read ({exc.strerror})") from None


def local_target(local_path: str | os.PathLike[str], operation: str) -> Path:
    """local_path as an absolute path, after checking that it is missing or an empty directory (it is made
    when the download begins); InvalidArgumentError otherwise, before the sandbox is asked."""
    path = Path(os.path.abspath(os.fspath(local_path)))
    if path.is_symlink() and not path.exists():
        raise _refuse(operation, local_path, "is a dangling symlink (a missing or empty directory is needed)")
    if path.exists():
        if not path.is_dir():
            raise _refuse(
                operation, local_path, "exists and is not a directory (a missing or empty one is needed)"
            )
        if any(path.iterdir()):
            raise _refuse(
                operation, local_path, "is a directory that is not empty (a missing or empty one is needed)"
            )
    return path


def spool_beside(target: Path) -> IO[bytes]:
    """An anonymous temporary file on the target's filesystem (which must hold the tree anyway) for a
    stream that cannot be extracted as it arrives."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    return tempfile.TemporaryFile(dir=parent)


# -- packing ----------------------------------------------------------------------------------------------


# GNU format: names as their raw bytes (no PAX hdrcharset), which GNU tar, busybox and Go all read
def _header(name: str, kind: bytes, st: os.stat_result, *, size: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) & 0o7777
    info.mtime = int(st.st_mtime)
    info.size = size
    info.linkname = link
    info.uid = info.gid = 0  # the sandbox's side decides owners (as upload_file does)
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape")


def pack(dir_fd: int, *, progress: Progress | None = None, sandbox: bool = False) -> Iterator[bytes]:
    """A tar of the directory's contents (names relative to it, parents before children) in pieces of about
    CHUNK bytes. Borrows `dir_fd` (not closed). An entry that changes type or vanishes while it is read is
    skipped with a warning; a file that grows or shrinks meanwhile is cut or padded to the size its header
    announced (the archive stays well formed). An entry that cannot be read raises InvalidArgumentError
    naming local_path (the client's folder), or PermissionDeniedError (`sandbox`: a sandbox's folder)."""
    buffer = bytearray()

    def unreadable(shown: str, exc: OSError) -> Exception:
        reason = exc.strerror or str(exc)
        if sandbox:
            return PermissionDeniedError(shown, reason)
        return InvalidArgumentError(f"local_path: {shown!r} cannot be read ({reason})", argument="local_path")

    def open_entry(fd: int, name: str, flags: int, vanished: tuple[int, ...], shown: str) -> int | None:
        """The entry's descriptor; None (logged) when it changed type or vanished since it was listed."""
        try:
            return os.open(name, flags, dir_fd=fd)
        except OSError as exc:
            if exc.errno in vanished:
                log.warning("%s changed while it was read: skipped", shown)
                return None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise unreadable(shown, exc) from None
            raise

    def flush() -> Iterator[bytes]:
        if buffer:
            piece = bytes(buffer)
            buffer.clear()
            if progress is not None:
                progress.add(len(piece))
            yield piece

    stack: list[tuple[int, str, Iterator[str]]] = [(dir_fd, "", iter(sorted(os.listdir(dir_fd))))]
    try:
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if fd != dir_fd:
                    os.close(fd)
                continue
            shown = prefix + name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted meanwhile
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError:
                    log.warning("%s changed while it was read: skipped", shown)
                    continue
                buffer += _header(shown, tarfile.SYMTYPE, st, link=target)
            elif stat.S_ISDIR(st.st_mode):
                sub = open_entry(fd, name, _DIR_OPEN, (errno.ENOENT, errno.ENOTDIR, errno.ELOOP), shown)
                if sub is None:
                    continue
                try:
                    children = sorted(os.listdir(sub))
                except BaseException:
                    os.close(sub)
                    raise
                buffer += _header(shown + "/", tarfile.DIRTYPE, os.fstat(sub))
                stack.append((sub, shown + "/", iter(children)))
            elif stat.S_ISREG(st.st_mode):
                src = open_entry(fd, name, _FILE_OPEN, (errno.ENOENT, errno.ELOOP, errno.ENXIO), shown)
                if src is None:
                    continue
                try:
                    now = os.fstat(src)
                    if not stat.S_ISREG(now.st_mode):
                        log.warning("%s changed while it was read: skipped", shown)
                        continue
                    buffer += _header(shown, tarfile.REGTYPE, now, size=now.st_size)
                    left = now.st_size
                    while left:
                        piece = os.read(src, min(CHUNK, left))
                        if not piece:  # it shrank: pad to the size announced
                            piece = bytes(min(CHUNK, left))
                        buffer += piece
                        left -= len(piece)
                        if len(buffer) >= CHUNK:
                            yield from flush()
                    buffer += bytes(-now.st_size % _BLOCK)
                finally:
                    os.close(src)
            else:
                log.warning(
                    "%s is not a file, directory or symlink (a socket, pipe or device): skipped", shown
                )
                continue
            if len(buffer) >= CHUNK:
                yield from flush()
        buffer += bytes(2 * _BLOCK)  # the end of the archive
        yield from flush()
    finally:
        for fd, _, _ in stack:
            if fd != dir_fd:
                os.close(fd)


# -- unpacking --------------------------------------------------------------------------------------------


class ChunkReader:
    """A read()-able file over an iterable of bytes (tarfile's stream mode reads from it)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size if size >= 0 else None
        while wanted is None or wanted > 0:
            if self._offset >= len(self._pending):
                piece = next(self._chunks, None)
                if piece is None:
                    break
                self._pending, self._offset = piece, 0
                continue
            end = len(self._pending) if wanted is None else min(len(self._pending), self._offset + wanted)
            part = self._pending[self._offset : end]
            self._offset = end
            parts.append(part)
            if wanted is not None:
                wanted -= len(part)
        return b"".join(parts)


class _Filter:
    """tarfile's extraction filter for an archive from a sandbox: tar_filter's rules (absolute names made
    relative, nothing outside the destination, not even through a link already extracted), hard links only
    to files inside, special files skipped, the permission bits kept, owners not restored."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        name, linkname = member.name, member.linkname
        if posixpath.normpath(name) in (".", "/"):
            return None  # the directory itself (`./`): local_path is it
        if member.type not in _KEPT_TYPES and not member.islnk():
            log.warning("%s is not a file, directory or symlink (a device, pipe or socket): skipped", name)
            return None
        try:
            safe = tarfile.tar_filter(member, dest)
            if member.islnk():
                if os.path.isabs(linkname):
                    raise tarfile.AbsoluteLinkError(member)
                target = os.path.realpath(os.path.join(dest, linkname))
                if os.path.commonpath([target, dest]) != dest:
                    raise tarfile.LinkOutsideDestinationError(member, target)
        except tarfile.FilterError as exc:
            raise PathOutsideSandboxError(
                member.name,
                f"the sandbox's archive holds {member.name!r}, which would be written outside local_path "
                f"{dest} ({type(exc).__name__}: {exc}); refused, nothing is written outside it",
                operation=self.operation,
            ) from None
        mode = member.mode & 0o777 if member.isreg() or member.isdir() else None
        # None: tarfile skips that step (typeshed says int)
        return safe.replace(mode=mode, uid=None, gid=None, uname=None, gname=None, deep=False)  # type: ignore[arg-type]


def extract(stream: IO[bytes] | ChunkReader, target: Path, operation: str) -> None:
    """Unpack a tar read from `stream` into `target` (made, with its parents, when missing)."""
    target.mkdir(parents=True, exist_ok=True)
    dest = os.path.realpath(target)
    try:
        with tarfile.open(
            fileobj=stream,
            mode="r|",
            bufsize=CHUNK,
            encoding=_ENCODING,
            errors="surrogateescape",
            copybufsize=CHUNK,
        ) as tar:  # type: ignore[call-overload]
            tar.extractall(dest, filter=_Filter(operation))
    except tarfile.ReadError as exc:  # (a FilterError is no ReadError)
        raise ProviderError(f"the sandbox sent a broken tar archive ({exc})", operation=operation) from exc


def _open_below(root_fd: int, parts: list[str]) -> int:
    """A descriptor of root/parts..., every step opened O_NOFOLLOW: a link swapped in fails, never leads out."""
    fd = os.dup(root_fd)
    for part in parts:
        try:
            nxt = os.open(part, _DIR_OPEN, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise _changed("/".join(parts)) from None
            raise
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _changed(name: str) -> ProviderError:
    return ProviderError(
        f"{name!r} changed while the directory was unpacked (a process of the sandbox replaced or removed "
        "it): stopped there, nothing is written through a link",
        retryable=True,
    )


def unpack_at(root_fd: int, stream: ChunkReader | IO[bytes], operation: str) -> None:
    """Unpack a tar into the directory `root_fd` by descriptors only (for a directory the sandbox's own
    processes can change meanwhile): each member's parents are opened O_NOFOLLOW from root_fd, files are
    created O_EXCL|O_NOFOLLOW, so nothing is written through a link. Permission bits and mtimes are kept
    (directories' set last, deepest first); owners are the caller's."""
    directories: list[tuple[list[str], int, float]] = []
    with tarfile.open(
        fileobj=stream,
        mode="r|",
        bufsize=CHUNK,
        encoding=_ENCODING,
        errors="surrogateescape",
        copybufsize=CHUNK,
    ) as tar:  # type: ignore[call-overload]
        for member in tar:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not parts:
                continue
            if ".." in parts:
                raise PathOutsideSandboxError(member.name, "a `..` name in the archive", operation=operation)
            if member.type not in _KEPT_TYPES:
                log.warning("%s is not a file, directory or symlink: skipped", member.name)
                continue
            parent = _open_below(root_fd, parts[:-1])
            name = parts[-1]
            try:  # (an entry there already was put there meanwhile, by the sandbox)
                if member.isdir():
                    os.mkdir(name, 0o700, dir_fd=parent)
                    directories.append((parts, member.mode & 0o7777, member.mtime))
                elif member.issym():
                    os.symlink(member.linkname, name, dir_fd=parent)
                else:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(name, flags, 0o600, dir_fd=parent)
                    try:
                        source = tar.extractfile(member)
                        assert source is not None  # (a regular member)
                        while piece := source.read(CHUNK):
                            _write_all(fd, piece)
                        os.fchmod(fd, member.mode & 0o7777)
                        os.utime(fd, (member.mtime, member.mtime))
                    finally:
                        os.close(fd)
            except FileExistsError:
                raise _changed(member.name) from None
            finally:
                os.close(parent)
    for parts, mode, mtime in reversed(directories):
        fd = _open_below(root_fd, parts)
        try:
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
