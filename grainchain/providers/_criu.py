"""Finding and probing CRIU, for both providers that checkpoint processes with it (flavour-free, blocking).

The local provider runs criu itself; the docker provider's engine runs it (runc execs the `criu` on its
PATH), so that provider probes the binary the engine would find (grainchain/providers/docker/_async/adapter.py,
_find_criu). Either way memory snapshots need CRIU 4 or newer (3.17, Debian 12's, cannot dump on current
kernels) and a passing `criu check`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

MIN_VERSION = (4, 0)
# where criu is installed; services such as dockerd have them on their PATH even when a shell does not
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_problems: dict[str, str | None] = {}  # criu path -> why it cannot checkpoint here (probed once)


def criu_path(path: str | None = None) -> str | None:
    """The criu that `path` (default: this process's PATH, then the sbin directories) leads to."""
    search = path if path is not None else os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which("criu", path=search)


def version(criu: str) -> tuple[int, int] | None:
    """`criu --version`'s major and minor (None when it prints none)."""
    out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"Version:\s*(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def problem(criu: str) -> str | None:
    """Why the CRIU at `criu` cannot checkpoint here (None when it can): its version, then `criu check`
    (which needs root). Probed once per binary and process."""
    if criu in _problems:
        return _problems[criu]
    reason: str | None = None
    try:
        found = version(criu)
        if found is None or found < MIN_VERSION:
            shown = ".".join(map(str, found)) if found else "of an unknown version"
            reason = f"criu {shown} ({criu}) is too old (4.0 or newer works on this kernel)"
        else:
            check = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60)
            if check.returncode != 0:
                reason = f"`{criu} check` fails: {(check.stderr or check.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"criu ({criu}) does not run: {exc}"
    _problems[criu] = reason
    return reason
