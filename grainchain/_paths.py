"""Path rules shared by adapters: a sandbox path is absolute, or relative to the working directory, and must
stay inside the sandbox's root after `..` and symlinks are resolved."""

from __future__ import annotations

import os
from pathlib import Path

from grainchain.errors import PathOutsideSandboxError


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_inside(root: Path, base: Path, path: str, *, follow_symlinks: bool = True) -> Path:
    """`path` as an absolute path inside `root` (which must be a real path); relative paths start at `base`.

    Raises PathOutsideSandboxError when `..`, an absolute path or a symlink on the way leads out of `root`.
    With `follow_symlinks=False` a symlink as the last component is not followed: the path names the link
    itself (to stat or delete it), so only the directories leading to it must stay inside `root`.

    `..` is resolved by name before symlinks (`link/..` is the directory holding `link`), and the returned
    path is that normalised one, so what is checked is what gets opened.
    """
    candidate = os.path.normpath(os.path.join(base, path))
    if not _within(candidate, str(root)):
        raise PathOutsideSandboxError(path, f"it resolves to {candidate}, outside the sandbox root {root}")
    if follow_symlinks or candidate == str(root):
        real = os.path.realpath(candidate)
    else:
        parent, name = os.path.split(candidate)
        real = os.path.join(os.path.realpath(parent), name)
    if not _within(real, str(root)):
        raise PathOutsideSandboxError(
            path, f"a symlink on the way leads to {real}, outside the sandbox root {root}"
        )
    return Path(candidate)
