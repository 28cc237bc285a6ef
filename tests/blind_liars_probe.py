"""Confirm every blind liar of tests/blind_liars.py: its probe must see the lie (True) on the liar and not
(False) on an honest copy of the local provider.

    python tests/blind_liars_probe.py [names...]

Each liar (plus `honest`) is installed as a plugin into a temporary directory, exactly as the harness does
(module grainchain_liar_<name>.py + grainchain_liar_<name>-1.0.dist-info/ with METADATA and
entry_points.txt); each probe runs in its own subprocess with that directory on PYTHONPATH and a fresh
GRAINCHAIN_STATE_DIR. Prints a table; exits 1 when a lie is not confirmed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE_TIMEOUT = 180


RUNNER = r"""
import json, sys, textwrap
body, name = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2]
namespace = {}
exec("def probe(Sandbox, name):\n" + textwrap.indent(body, "    "), namespace)
import grainchain.sync
result = namespace["probe"](grainchain.sync.Sandbox, name)
print("\nPROBE-RESULT " + json.dumps({"result": bool(result), "raw": repr(result)}))
"""


def load_liars():
    spec = importlib.util.spec_from_file_location("blind_liars", HERE / "blind_liars.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["blind_liars"] = module
    spec.loader.exec_module(module)
    return module


def install(directory: Path, name: str, lie: str, methods: str, imports: str) -> None:
    """Exactly as the teeth harness installs a liar (its own install())."""
    sys.path.insert(0, str(HERE))
    from test_conformance_teeth import Liar
    from test_conformance_teeth import install as install_liar

    install_liar(directory, Liar(name, lie, methods, imports=imports))


def _unmount_below(path: Path) -> None:
    """Mounts a probe may have left (kept sandboxes' disks, overlay workspaces): deepest first."""
    prefix = str(path.resolve())
    with open("/proc/mounts", encoding="utf-8") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p.startswith(prefix + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def run_probe(plugins: Path, body: str, provider: str) -> tuple[bool | None, float, str]:
    """(probe result or None on error, seconds, diagnostics)."""
    state = Path(tempfile.mkdtemp(prefix="blind-state-"))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, encoding="utf-8") as f:
        f.write(body)
        body_file = f.name
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), *filter(None, [env.get("PYTHONPATH")])])
    env["GRAINCHAIN_STATE_DIR"] = str(state)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, body_file, provider],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, code = str(exc.stdout or ""), str(exc.stderr or ""), "timeout"
    elapsed = time.monotonic() - started
    os.unlink(body_file)
    _unmount_below(state)
    shutil.rmtree(state, ignore_errors=True)
    for line in out.splitlines():
        if line.startswith("PROBE-RESULT "):
            return json.loads(line[len("PROBE-RESULT ") :])["result"], elapsed, ""
    return None, elapsed, f"exit {code}: {(err or out)[-1500:]}"


def main(argv: list[str]) -> int:
    liars = load_liars().BLIND_LIARS
    names = [liar.name for liar in liars]
    assert len(set(names)) == len(names), "liar names must be unique"
    assert all(re.fullmatch(r"[a-z0-9_]+", n) and n != "honest" for n in names)
    selected = [liar for liar in liars if not argv or liar.name in argv]
    unknown = set(argv) - set(names)
    if unknown:
        print(f"unknown liars: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    failures = []
    with tempfile.TemporaryDirectory(prefix="blind-liars-") as tmp:
        plugins = Path(tmp)
        install(plugins, "honest", "none (honest copy)", "", "")
        for liar in selected:
            install(plugins, liar.name, liar.lie, liar.methods, liar.imports)
        width = max(len(liar.name) for liar in selected)
        print(f"{'name':<{width}}  liar   honest  seconds (liar+honest)")
        for liar in selected:
            on_liar, t1, why1 = run_probe(plugins, textwrap.dedent(liar.probe), liar.name)
            on_honest, t2, why2 = run_probe(plugins, textwrap.dedent(liar.probe), "honest")
            ok = on_liar is True and on_honest is False
            mark = "" if ok else "   <-- NOT CONFIRMED"
            print(
                f"{liar.name:<{width}}  {on_liar!s:<6} {on_honest!s:<7} {t1:5.1f}+{t2:4.1f}{mark}", flush=True
            )
            for why in (why1, why2):
                if why:
                    print(textwrap.indent(why.strip(), "      | "))
            if not ok:
                failures.append(liar.name)
    if failures:
        print(f"\nnot confirmed: {', '.join(failures)}")
        return 1
    print(f"\nall {len(selected)} lies confirmed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
