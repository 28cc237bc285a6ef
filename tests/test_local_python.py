"""Python in local sandboxes (grainchain/providers/local/_python.py): `python`, `python3`, `pip`, `pip3` are
the interpreter running these tests, in a virtual environment of the sandbox's own (`<workspace>/.venv`, made
by the first Python command), with none of the host's or grainchain's packages. Every test runs in both
isolation modes and, through conftest's make_sandbox, with both clients. Offline: the packages installed are
wheels the tests write themselves."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _wheels import wheel

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.providers.local import _python
from grainchain.providers.local._isolation import namespaces_unavailable

ISOLATIONS = [
    "none",
    pytest.param(
        "namespaces",
        marks=pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}"),
    ),
]
PROBE = "grainchain_probe_pkg"


def config(isolation: str, **fields: Any) -> SandboxConfig:
    return SandboxConfig(provider_config={"isolation": isolation}, **fields)


async def install_probe(sandbox: Any) -> None:
    """Upload the probe package's wheel and pip-install it, offline."""
    name, data = wheel(PROBE, "1.0", {f"{PROBE}/__init__.py": "VALUE = 'installed in the sandbox'\n"})
    await sandbox.upload_file(name, data)
    done = await sandbox.execute(f"pip install --no-index ./{name}", timeout=120)
    assert done.return_code == 0, done.stderr
    assert f"Successfully installed {PROBE.replace('_', '-')}-1.0" in done.stdout


IMPORT_PROBE = f"python -c 'import {PROBE}; print({PROBE}.VALUE)'"


async def workspace_of(sandbox: Any) -> str:
    return str((await sandbox.execute("pwd")).stdout.strip())


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_python_and_pip_are_the_running_interpreter_in_the_sandbox_venv(
    make_sandbox: Any, isolation: str
) -> None:
    sandbox = await make_sandbox(config(isolation))
    workspace = await workspace_of(sandbox)
    for program in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        done = await sandbox.execute(f"{program} --version")
        assert (done.return_code, done.stdout) == (0, f"Python {platform.python_version()}\n"), done.stderr
    where = await sandbox.execute("python -c 'import sys; print(sys.prefix); print(sys.base_prefix)'")
    assert where.stdout.split() == [f"{workspace}/.venv", sys.base_prefix]
    # the document's check, as written
    versions = await sandbox.execute("python --version && pip --version")
    assert versions.return_code == 0, versions.stderr
    major_minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert versions.stdout.splitlines()[1].startswith("pip ")
    assert versions.stdout.splitlines()[1].endswith(f"(python {major_minor})")
    assert (await sandbox.execute("pip3 --version")).stdout == versions.stdout.splitlines()[1] + "\n"
    # the environment is the sandbox's: visible to commands as an activated venv would be
    env = await sandbox.execute('echo "$VIRTUAL_ENV"; command -v python')
    assert env.stdout.split() == [f"{workspace}/.venv", f"{workspace}/.venv/bin/python"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_none_of_grainchains_or_the_hosts_packages_are_importable(
    make_sandbox: Any, isolation: str
) -> None:
    import pydantic  # noqa: F401 - grainchain's dependency, importable here

    sandbox = await make_sandbox(config(isolation))
    done = await sandbox.execute("python -c 'import pydantic'")
    assert done.return_code == 1
    assert "No module named 'pydantic'" in done.stderr
    listed = await sandbox.execute("pip list --format=freeze --disable-pip-version-check")
    assert listed.return_code == 0, listed.stderr
    assert [line.split("==")[0] for line in listed.stdout.split()] == ["pip"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_pip_install_is_the_sandboxs_own_and_survives_a_snapshot(
    make_sandbox: Any, isolation: str
) -> None:
    sandbox = await make_sandbox(config(isolation))
    await install_probe(sandbox)
    assert (await sandbox.execute(IMPORT_PROBE)).stdout == "installed in the sandbox\n"

    other = await make_sandbox(config(isolation))
    refused = await other.execute(IMPORT_PROBE)
    assert refused.return_code == 1
    assert f"No module named '{PROBE}'" in refused.stderr
    for host_python in (sys.executable, sys._base_executable):  # type: ignore[attr-defined]
        on_host = subprocess.run([host_python, "-c", f"import {PROBE}"], capture_output=True, check=False)
        assert on_host.returncode == 1, host_python

    snapshot = await sandbox.create_snapshot()
    await other.restore_snapshot(snapshot)
    assert (await other.execute(IMPORT_PROBE)).stdout == "installed in the sandbox\n"
    assert (await other.execute("pip --version")).return_code == 0


async def test_a_snapshot_restores_into_a_sandbox_of_the_other_isolation_mode(make_sandbox: Any) -> None:
    """The venv names the base interpreter by its host path (isolated sandboxes see it there) and pip's
    store at both of its paths: the environment works in either mode after a restore."""
    if namespaces_unavailable() is not None:
        pytest.skip(f"{namespaces_unavailable()}")
    for source, target in (("namespaces", "none"), ("none", "namespaces")):
        sandbox = await make_sandbox(config(source))
        await install_probe(sandbox)
        restored = await make_sandbox(config(target))
        await restored.restore_snapshot(await sandbox.create_snapshot())
        assert (await restored.execute(IMPORT_PROBE)).stdout == "installed in the sandbox\n"
        again = await restored.execute("pip --version")
        assert again.return_code == 0, (source, target, again.stderr)


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_concurrent_first_python_commands_all_succeed(isolation: str) -> None:
    """The first commands make the venv: in a temporary directory renamed into place, so that two makers
    do not tear it and no command runs on a half-made one. Three start at once (each makes a venv, one
    rename wins); three more start the moment .venv/bin/python shows (pip's wrapper and .pth, written
    last, must be there by then)."""
    commands = ["python -c 'import sys; print(sys.prefix)'", "pip --version", "python3 -m pip --version"]
    async with AsyncSandbox("local", config(isolation)) as sandbox:
        first = [asyncio.ensure_future(sandbox.execute(c)) for c in commands]
        # polling the file is the point
        while not await sandbox.file_exists(".venv/bin/python") and not all(t.done() for t in first):  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        results = await asyncio.gather(*(sandbox.execute(c) for c in commands), *first)
        assert [(r.return_code, r.stderr) for r in results] == [(0, "")] * 6
        assert len({r.stdout for r in results}) == 2  # sys.prefix; pip's version (twice the same)
        leftovers = await sandbox.execute("ls -a | grep -c '^.venv' || true")
        assert leftovers.stdout == "1\n"  # .venv, no temporary sibling left


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_pip_installed_into_the_venv_wins_over_the_shared_one(
    make_sandbox: Any, isolation: str
) -> None:
    sandbox = await make_sandbox(config(isolation))
    name, data = wheel(
        "pip",
        "99.0",
        {"pip/__init__.py": "__version__ = '99.0'\n", "pip/__main__.py": "print('the venv pip')\n"},
    )
    await sandbox.upload_file(name, data)
    done = await sandbox.execute(f"pip install --no-index ./{name}", timeout=120)
    assert done.return_code == 0, done.stderr
    assert (await sandbox.execute("pip --version")).stdout == "the venv pip\n"
    assert (await sandbox.execute("python -m pip")).stdout == "the venv pip\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_path_the_user_sets_is_left_alone(make_sandbox: Any, isolation: str) -> None:
    sandbox = await make_sandbox(config(isolation, environment_vars={"PATH": "/usr/bin:/bin"}))
    done = await sandbox.execute('command -v python3; echo "[$VIRTUAL_ENV]"')
    assert done.stdout == "/usr/bin/python3\n[]\n"
    per_command = await sandbox.execute("echo $PATH", environment={"PATH": "/bin"})
    assert per_command.stdout == "/bin\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_without_any_pip_on_the_host_pip_says_what_to_install(
    make_sandbox: Any, isolation: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_python, "_pip_source", lambda: ("none", None))
    monkeypatch.setattr(_python, "_stores", {})  # (the next test's sandboxes get the store with pip again)
    monkeypatch.setenv(
        "XDG_CACHE_HOME", str(tmp_path / "cache")
    )  # (and the user's cache keeps no pip-less one)
    sandbox = await make_sandbox(config(isolation))
    assert (await sandbox.execute("python -c pass")).return_code == 0
    for command in ("pip --version", "pip3 install x", "python -m pip --version"):
        done = await sandbox.execute(command)
        assert done.return_code != 0, command
    done = await sandbox.execute("pip --version")
    assert done.return_code == 127
    assert "Install pip for it on the host" in done.stderr
    assert sys._base_executable in done.stderr  # type: ignore[attr-defined]


@pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}")
async def test_isolated_sandboxes_see_the_store_and_the_interpreter_read_only(make_sandbox: Any) -> None:
    sandbox = await make_sandbox(config("namespaces"))
    await sandbox.execute("python -c pass")
    for path in (f"{_python.SANDBOX_STORE}/bin/python", f"{sys.base_prefix}/bin/x"):
        done = await sandbox.execute(f"touch {path}")
        assert done.return_code != 0, path
        assert "Read-only file system" in done.stderr, path
    # the store's host path does not show inside; of the host's home directory, only the interpreter
    store = _python.store().host
    assert (await sandbox.execute(f"test -e {store}")).return_code == 1
    if sys.base_prefix.startswith("/root/"):
        assert (await sandbox.execute("ls -A /root")).stdout.split() == [Path(sys.base_prefix).parts[2]]


def test_the_store_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_python, "_stores", {})
    first = _python.store()
    assert first.host.parent == tmp_path / "cache" / "grainchain" / "python"
    _python._stores.clear()
    assert _python.store() == first  # found on disk, not made again
    assert [p.name for p in first.host.parent.iterdir()] == [first.host.name]  # no temporary left
    assert (first.host / "site" / "pip" / "__main__.py").is_file()


def test_the_venv_appears_whole(tmp_path: Path) -> None:
    """Watched from the host as the maker runs: the moment .venv/bin/python exists, so do pip's wrapper
    and .pth (a command that finds bin/python runs at once, without the maker)."""
    store = _python.store()
    target = tmp_path / "workspace" / ".venv"
    maker = subprocess.Popen(
        [sys._base_executable, "-I", "-S", str(store.host / "mkvenv.py"), str(target)]  # type: ignore[attr-defined]
    )
    seen: list[str] = []
    while not seen and maker.poll() is None:
        if os.path.lexists(target / "bin" / "python"):
            seen = [
                *os.listdir(target / "bin"),
                *os.listdir(next((target / "lib").iterdir()) / "site-packages"),
            ]
    assert maker.wait() == 0
    assert {"pip", "pip3", "python", "_grainchain_pip.pth"} <= set(seen), seen
