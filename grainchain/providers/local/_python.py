"""Python in local sandboxes (flavour-free): `python`, `python3`, `pip`, `pip3` are the interpreter running
grainchain, in a virtual environment of each sandbox's own, made on first use.

    <user cache dir>/grainchain/python/<key>/bin/{python,python3,python3.X,pip,pip3,pip3.X}   sh shims
                                            /mkvenv.py                                      the maker
                                            /site/{pip,pip-*.dist-info}                     pip only
    <workspace>/.venv                                                                       the venv

The store (one per user and base interpreter, `key` a hash of it, of the pip it holds and of the shims'
text) is made once, in a temporary directory renamed into place. It is not in the state dir: an isolated
sandbox's mount table shows the host path of what it binds, and the state dir's must not show (it leads
to the sandbox's writable layers; tests/security/test_proc_surface.py). Every command's PATH is
`<venv>/bin:<shims>:<the minimal PATH>` and VIRTUAL_ENV names the venv (unless the user set PATH). Before
the venv exists a shim runs:
it makes the venv (the maker: venv.EnvBuilder in a temporary sibling renamed into place, so two concurrent
first commands do not tear it) and execs the real program; from then on `<venv>/bin/python` comes first on
PATH and the shims cost nothing. The venv has no pip of its own (ensurepip takes seconds): a .pth file adds
the store's `site` directory, which holds only pip (hardlinked or copied from grainchain's environment, or
extracted from ensurepip's bundled wheel), and `<venv>/bin/pip` runs `python -m pip` beside it. A pip
installed into the venv later comes first on sys.path and wins.

The venv lives in the workspace, so snapshots capture it; its bin/python is a link to the base interpreter,
which isolated sandboxes see read-only at its host path (bound when it is not under the system directories
they see anyway), and they see the store read-only at SANDBOX_STORE. The .pth names the store at both
paths (a missing one is skipped), so a snapshot restores into a sandbox of either isolation mode.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.machinery
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from grainchain.providers.local._hostproc import MINIMAL_PATH

logger = logging.getLogger("grainchain.local")

VENV = ".venv"  # in the workspace
SANDBOX_STORE = "/.grainchain/python"  # the store, as isolated sandboxes see it (read-only)
_FORMAT = "1"  # part of the store's key (with the shims' and the maker's text): a new layout, a new store
# what _Base.usable asks another interpreter (-I -S: nothing of the user's or the site's)
_DESCRIBE = (
    "import json, os, sys; print(json.dumps([os.path.realpath(sys.executable), '%d.%d' % sys.version_info[:2], "
    "sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})]))"
)
_SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/etc/", "/opt/")


@dataclass(frozen=True)
class Store:
    """The Python store: where it is on the host, and what an isolated sandbox binds read-only (the store at
    SANDBOX_STORE, the base interpreter's prefix at its own path)."""

    host: Path
    binds: tuple[tuple[str, str], ...]  # (host path, sandbox path)

    def environment(self, isolated: bool, workspace: str, *given: Mapping[str, str]) -> dict[str, str]:
        """PATH and VIRTUAL_ENV of a command whose workspace is `workspace` (as it sees it), unless a layer
        of the user's environment (`given`) sets PATH: then the user's PATH rules, and nothing is added."""
        if any("PATH" in layer for layer in given):
            return {}
        venv = f"{workspace.rstrip('/')}/{VENV}"
        for layer in given:
            venv = layer.get("VIRTUAL_ENV", venv)  # the user's venv, made by the shims as ours would be
        shims = f"{SANDBOX_STORE}/bin" if isolated else f"{self.host}/bin"
        return {"PATH": f"{venv}/bin:{shims}:{MINIMAL_PATH}", "VIRTUAL_ENV": venv}


@dataclass(frozen=True)
class _Base:
    """The interpreter running grainchain, without its environment (venv) around it."""

    executable: str  # realpath of sys._base_executable
    version: str  # "3.11"
    prefixes: tuple[str, ...]  # its prefix (and exec prefix), resolved

    @classmethod
    def running(cls) -> _Base:
        executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
        return cls(executable, f"{sys.version_info[0]}.{sys.version_info[1]}", tuple(sorted(prefixes)))

    @classmethod
    def usable(cls) -> _Base:
        """The running interpreter, or, where this user cannot run it (root's pyenv under a 0700 /root for
        another user), the first python3 on the minimal PATH, with a warning: a sandbox's Python must be one
        its commands can run."""
        running = cls.running()
        if os.access(running.executable, os.X_OK):
            return running
        other = shutil.which("python3", path=MINIMAL_PATH)
        if other is None:
            return running  # the shims say that the sandbox cannot run it
        probe = subprocess.run(
            [other, "-I", "-S", "-c", _DESCRIBE], capture_output=True, text=True, timeout=60, check=False
        )
        if probe.returncode != 0:
            return running
        executable, version, prefixes = json.loads(probe.stdout)
        logger.warning(
            "the interpreter running grainchain (%s) is not executable by this user: local sandboxes get %s "
            "(Python %s) as python/python3 instead",
            running.executable,
            executable,
            version,
        )
        return cls(executable, version, tuple(prefixes))

    def binds(self) -> list[tuple[str, str]]:
        """What an isolated sandbox must bind to run it: its prefix, unless a system directory has it; and
        the executable's directory if it lies outside the prefix."""
        needed = list(self.prefixes)
        directory = os.path.dirname(self.executable)
        if not any(_inside(directory, p) for p in needed):
            needed.append(directory)
        # (one the user cannot read, e.g. root's pyenv for another user, would fail the sandbox's start: the
        # sandbox then runs without it, and its `python` says why)
        return [
            (p, p)
            for p in needed
            if not _inside(p + "/", *_SYSTEM_DIRS) and p != "/" and os.access(p, os.R_OK | os.X_OK)
        ]


def _inside(path: str, *directories: str) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in directories)


# -- pip's sources --------------------------------------------------------------------------------------


def _pip_from_environment() -> tuple[Path, list[Path]] | None:
    """pip's package directory in grainchain's environment and its dist-info (metadata: `pip list` shows it,
    and pip does not uninstall itself from the store: it is outside the venv), or None."""
    # PathFinder, not importlib.util.find_spec: setuptools' distutils hack answers a meta-path lookup of
    # "pip" by switching itself off for the rest of the process (unasync then imports the stdlib distutils)
    spec = importlib.machinery.PathFinder.find_spec("pip")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    if not (package / "__main__.py").is_file():
        return None
    return package, sorted(package.parent.glob("pip-*.dist-info"))[-1:]


def _pip_wheel() -> Path | None:
    """The pip wheel ensurepip would install (bundled, or where a distribution keeps it), or None."""
    places = [Path("/usr/share/python-wheels")]
    spec = importlib.machinery.PathFinder.find_spec("ensurepip")
    if spec is not None and spec.origin:
        places.insert(0, Path(spec.origin).parent / "_bundled")
    for place in places:
        wheels = sorted(place.glob("pip-*.whl")) if place.is_dir() else []
        if wheels:
            return wheels[-1]
    return None


def _pip_source() -> tuple[str, Path | tuple[Path, list[Path]] | None]:
    found = _pip_from_environment()
    if found is not None:
        package, metadata = found
        stamp = [str(package.stat().st_mtime_ns)] + [m.name for m in metadata]
        return f"env:{package}:{':'.join(stamp)}", found
    wheel = _pip_wheel()
    return (f"wheel:{wheel}", wheel) if wheel is not None else ("none", None)


def _link_or_copy(source: str, target: str) -> None:
    """Hardlink (the store costs no copy; pip's own upgrades replace files, never rewrite them), else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fill_site(site: Path, source: Path | tuple[Path, list[Path]]) -> None:
    site.mkdir()
    if isinstance(source, Path):  # a wheel: pip's package and dist-info, nothing to build
        with zipfile.ZipFile(source) as wheel:
            wheel.extractall(site)
        return
    package, metadata = source
    for directory in (package, *metadata):
        # with its __pycache__: the store is read-only to sandboxes, which could not write the .pyc files
        shutil.copytree(directory, site / directory.name, copy_function=_link_or_copy)


# -- the shims and the maker ----------------------------------------------------------------------------

_SHIM = """\
#!/bin/sh
# grainchain: this sandbox's Python. Makes its virtual environment ($VIRTUAL_ENV) on first use (-S: the base
# interpreter's site-packages are not the maker's business), then runs the program of that name in it; once
# it exists, $VIRTUAL_ENV/bin comes first on PATH and this never runs.
v="${{VIRTUAL_ENV:?grainchain: VIRTUAL_ENV names the sandbox's Python environment and is not set}}"
n="${{0##*/}}"
if [ ! -x "$v/bin/python" ]; then
  if [ ! -x {base} ]; then
    echo "grainchain: the sandbox cannot run {base} (the interpreter running grainchain)" >&2
    exit 127
  fi
  {base} -I -S "${{0%/*}}/../mkvenv.py" "$v" || exit
fi
if [ ! -x "$v/bin/$n" ]; then
  echo "grainchain: {missing}" >&2
  exit 127
fi
exec "$v/bin/$n" "$@"
"""

_NO_PIP = (
    "no pip for the sandbox's Python: the interpreter running grainchain ({base}) has neither a pip module nor "
    "ensurepip's pip wheel. Install pip for it on the host (e.g. '{base} -m ensurepip', or the python3-pip "
    "package), then make a new sandbox"
)

_MAKER = '''\
"""grainchain: makes a sandbox's Python environment (a venv without pip of its own: a .pth file adds the
store's pip). Run by the shims beside it, with the base interpreter, on the sandbox's first use of Python."""
import os
import shutil
import sys
import tempfile
import venv

SITE = {site!r}  # the store's pip directory, as isolated sandboxes and as the host see it
HAS_PIP = {has_pip!r}
PIP_NAMES = ("pip", "pip3", "pip{version}")
PIP_WRAPPER = '#!/bin/sh\\nexec "$(dirname "$0")/python" -m pip "$@"\\n'  # relative: survives a restore


def made(target):
    return os.access(os.path.join(target, "bin", "python"), os.X_OK)


def fill(tmp, target):
    venv.EnvBuilder(symlinks=True, prompt=os.path.basename(target)).create(tmp)
    # what names the directory it was made in must name the one it is renamed to
    for path in [os.path.join(tmp, "pyvenv.cfg")] + [
        os.path.join(tmp, "bin", n) for n in os.listdir(os.path.join(tmp, "bin")) if n.startswith("activate")
    ]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(tmp, target))
    if HAS_PIP:
        site = os.path.join(tmp, "lib", "python{version}", "site-packages")
        with open(os.path.join(site, "_grainchain_pip.pth"), "w", encoding="utf-8") as f:
            f.write("".join(line + "\\n" for line in SITE))
        for name in PIP_NAMES:
            path = os.path.join(tmp, "bin", name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(PIP_WRAPPER)
            os.chmod(path, 0o755)


def main():
    target = os.path.abspath(sys.argv[1])
    if made(target):
        return 0
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".venv-", dir=parent)
    try:
        fill(tmp, target)
        try:
            os.rename(tmp, target)  # (over an empty directory too)
        except OSError:
            if not made(target):  # else another command made it first: use that one
                print(
                    "grainchain: cannot make the sandbox's Python environment: " + target + " exists and is "
                    "not one (no bin/python); remove it, or set VIRTUAL_ENV to another directory",
                    file=sys.stderr,
                )
                return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


sys.exit(main())
'''


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _fill_store(tmp: Path, host: Path, base: _Base, pip: Path | tuple[Path, list[Path]] | None) -> None:
    """Everything of the store, written into `tmp`, which is then renamed to `host`."""
    if pip is not None:
        _fill_site(tmp / "site", pip)
    sites = [f"{SANDBOX_STORE}/site", str(host / "site")]
    (tmp / "mkvenv.py").write_text(_MAKER.format(site=sites, has_pip=pip is not None, version=base.version))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    names = ["python", "python3", f"python{base.version}", "pip", "pip3", f"pip{base.version}"]
    for name in names:
        missing = f"no {name} in $v (remove $v to have it made again)"
        if name.startswith("pip") and pip is None:
            missing = _NO_PIP.format(base=base.executable)
        shim = bin_dir / name
        shim.write_text(_SHIM.format(base=_shell_quote(base.executable), missing=missing.replace('"', "'")))
        shim.chmod(0o555)


_stores: dict[Path, Store] = {}


def store_root() -> Path:
    return platformdirs.user_cache_path("grainchain") / "python"


def store() -> Store:
    """The Python store, made on first use (blocking: the first time per user and interpreter, ~20 ms of
    hardlinks; afterwards one stat)."""
    root = store_root()
    known = _stores.get(root)
    if known is not None and known.host.is_dir():
        return known
    base = _Base.usable()
    label, pip = _pip_source()
    # what the store holds decides its name: a new grainchain's shims, another interpreter, another pip
    stamp = [_FORMAT, _SHIM, _MAKER, _NO_PIP, base.executable, sys.version, label]
    key = hashlib.sha256("\0".join(stamp).encode()).hexdigest()[:16]
    host = root / key
    if not host.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _fill_store(tmp, host, base, pip)
            try:
                tmp.rename(host)
            except OSError as exc:  # another process made it meanwhile: the same content
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not host.is_dir():
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
    made = Store(host, ((str(host), SANDBOX_STORE), *base.binds()))
    _stores[root] = made
    return made
