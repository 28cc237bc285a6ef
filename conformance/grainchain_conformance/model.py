"""The model the state machine checks a sandbox against: a directory tree of files and directories."""

from __future__ import annotations

import copy
import string
from dataclasses import dataclass, field

# File names the suite uses: awkward for shells (quotes, $, spaces, globs, non-ASCII, a leading "-" or "."),
# safe for every filesystem a provider may run on. No "/", NUL or newline; "." and ".." are excluded.
SAFE_NAME_ALPHABET = string.ascii_letters + string.digits + " _-.,+=@#%&()[]{}'\"$!~;éü中"


@dataclass
class TreeModel:
    """Files (path -> bytes) and directories under the suite's base directory; paths are relative to it."""

    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    modes: dict[str, int] = field(default_factory=dict)  # permission bits set by chmod (unknown: absent)

    @staticmethod
    def ancestors(path: str) -> list[str]:
        parts = path.split("/")
        return ["/".join(parts[:i]) for i in range(1, len(parts))]

    def can_write_file(self, path: str) -> bool:
        return path not in self.dirs and not any(a in self.files for a in self.ancestors(path))

    def can_make_dir(self, path: str) -> bool:
        return path not in self.files and not any(a in self.files for a in self.ancestors(path))

    def write(self, path: str, data: bytes, *, append: bool = False) -> None:
        self.dirs.update(self.ancestors(path))
        self.files[path] = (self.files.get(path, b"") if append else b"") + data
        if not append:
            self.modes.pop(path, None)  # a replaced file's mode is the provider's to choose

    def make_dir(self, path: str) -> None:
        self.dirs.update([*self.ancestors(path), path])

    def delete(self, path: str) -> None:
        prefix = path + "/"
        self.files = {p: d for p, d in self.files.items() if p != path and not p.startswith(prefix)}
        self.dirs = {d for d in self.dirs if d != path and not d.startswith(prefix)}
        self.modes = {p: m for p, m in self.modes.items() if p != path and not p.startswith(prefix)}

    def listing(self, directory: str) -> dict[str, tuple[bool, int]]:
        """name -> (is_directory, size) of the entries directly in `directory` ("" is the base)."""
        prefix = f"{directory}/" if directory else ""
        entries: dict[str, tuple[bool, int]] = {}
        for path, data in self.files.items():
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                entries[path[len(prefix) :]] = (False, len(data))
        for path in self.dirs:
            if path.startswith(prefix) and "/" not in path[len(prefix) :]:
                entries[path[len(prefix) :]] = (True, 0)
        return entries

    def tree(self) -> dict[str, tuple[bool, int]]:
        """Every path -> (is_directory, size)."""
        return {**dict.fromkeys(self.dirs, (True, 0)), **{p: (False, len(d)) for p, d in self.files.items()}}

    def copy(self) -> TreeModel:
        return copy.deepcopy(self)
