"""Path mapping: the one place that turns a path as a sandbox sees it into a path on this machine.

A sandbox sees the host's file system read-only, except `/home/user` (its home directory, the default
working directory) and `/tmp`, which are its own directories under the fake's root; `/home` holds nothing
but `user`. Commands get exactly this view from bubblewrap; the filesystem service and `/files` get it from
here. Symbolic links are followed the way the sandbox would follow them (an absolute target such as
`/home/user/x` means the sandbox's home, not the host's), so every host path handed out has no link left
in it."""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path

HOME = "/home/user"
USERS = {"user": HOME, "root": "/root"}  # envd's users and their home directories
DEFAULT_USER = "user"
MAX_LINKS = 40  # as Linux: more links than this in one lookup is a loop


class SandboxPaths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home_parent = root / "home"  # /home
        self.home = self.home_parent / "user"  # /home/user
        self.tmp = root / "tmp"  # /tmp

    def create(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.tmp.chmod(0o1777)

    def bwrap_binds(self) -> list[str]:
        """bubblewrap arguments that give a command the same view (after `--ro-bind / /`)."""
        return [
            "--ro-bind", str(self.home_parent), "/home",
            "--bind", str(self.home), HOME,
            "--bind", str(self.tmp), "/tmp",
        ]  # fmt: skip

    @staticmethod
    def expand(path: str, user: str = DEFAULT_USER) -> str:
        """envd's ExpandAndResolve: '' and '~' are the user's home, relative paths start there; the result is
        absolute and clean (lexically: `..` is not resolved through links, as Go's filepath.Abs)."""
        home = USERS.get(user, HOME)
        if path in ("", "~"):
            path = home
        elif path.startswith("~/"):
            path = home + path[1:]
        elif not path.startswith("/"):
            path = posixpath.join(home, path)
        clean = posixpath.normpath(path)
        return "/" + clean.lstrip("/")

    def host(self, path: str) -> tuple[Path, bool]:
        """Where a clean absolute sandbox path lies on this machine, and whether the sandbox may write there.
        Links are not followed: see `resolve`."""
        for prefix, base, writable in ((HOME, self.home, True), ("/tmp", self.tmp, True)):
            if path == prefix or path.startswith(prefix + "/"):
                return base / path[len(prefix) :].lstrip("/"), writable
        if path == "/home" or path.startswith("/home/"):
            return self.home_parent / path[len("/home") :].lstrip("/"), False
        return Path(path), False

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """Follow the links in a clean absolute sandbox path as the sandbox would; components that do not
        exist are kept as they are. Raises OSError(ELOOP) on a loop."""
        todo = [part for part in path.split("/") if part]
        done = "/"
        links = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                done = posixpath.dirname(done)
                continue
            candidate = posixpath.join(done, name)
            if todo or follow_last:
                host, _ = self.host(candidate)
                try:
                    target = os.readlink(host)
                except OSError:  # not a link, or not there
                    done = candidate
                    continue
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                if target.startswith("/"):
                    done = "/"
                todo[:0] = [part for part in target.split("/") if part]
                continue
            done = candidate
        return done

    def locate(self, path: str, *, follow_last: bool = True, write: bool = False) -> tuple[str, Path]:
        """The resolved sandbox path and its host path; with `write`, refuses (EROFS, as the read-only
        file system refuses a command) anything outside the sandbox's own directories."""
        resolved = self.resolve(path, follow_last=follow_last)
        host, writable = self.host(resolved)
        if write and not writable:
            raise OSError(errno.EROFS, "read-only file system", resolved)
        return resolved, host

    def within(self, host: Path) -> bool:
        """Whether a host path is one of the sandbox's own files."""
        return host == self.root or self.root in host.parents
