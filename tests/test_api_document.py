"""The examples of the API document (reference/grainchain-api-features.md) that use the default or the local
provider, run as written: first with `from grainchain import Sandbox` (async), then with the blocking client
`from grainchain.sync import Sandbox`.

Where an example cannot run unchanged on the local provider, the change is the smallest possible and a
comment says why: `/workspace` (a path of container providers; on local it is a host path outside the
sandbox) becomes the workspace-relative `workspace`, and commands that need the network or root
(apt-get, pip install, git clone, npm) become harmless commands with the same shape.

The examples call `python`; where the host has only `python3`, the settings file gives every sandbox a PATH
with a `python` link (the examples themselves are untouched). That link is a host path, so these sandboxes
run with isolation="none"; tests/test_local_isolation.py runs the `/workspace` examples verbatim isolated.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from grainchain import (
    CapabilityError,
    FileInfo,
    PathOutsideSandboxError,
    SandboxConfig,
    SandboxStatus,
)
from grainchain.providers.local._hostproc import MINIMAL_PATH

SCRIPT = """\
import os, sys
print("args:", " ".join(sys.argv[1:]))
print("LOG_LEVEL:", os.environ.get("LOG_LEVEL"))
print("cwd:", os.path.basename(os.getcwd()))
print("a warning", file=sys.stderr)
"""


@pytest.fixture(autouse=True)
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's current directory (the examples open "data.zip" there) and a settings file that makes
    `python` available to sandboxes of a host that has only python3."""
    cwd = tmp_path / "host"
    cwd.mkdir()
    with zipfile.ZipFile(cwd / "data.zip", "w") as archive:
        archive.writestr("inside.txt", "zipped")
    monkeypatch.chdir(cwd)
    # unisolated: the `python` link below lives on the host; tests/test_local_isolation.py runs the
    # document's /workspace examples verbatim in isolated sandboxes
    sandbox_defaults = ""
    if shutil.which("python", path=MINIMAL_PATH) is None:
        python3 = shutil.which("python3", path=MINIMAL_PATH)
        assert python3, "the examples need a Python on the host"
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "python").symlink_to(python3)
        sandbox_defaults += f'environment_vars = {{ PATH = "{shim}:{MINIMAL_PATH}" }}\n'
    settings = tmp_path / "config.toml"
    settings.write_text(f'[sandbox]\n{sandbox_defaults}[providers.local]\nisolation = "none"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(settings))
    return cwd


# -- async: `from grainchain import Sandbox` ---------------------------------------------------------------


async def test_basic_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox, SandboxConfig  # noqa: F401 - as the document imports them

    # Basic usage with default provider
    async with Sandbox() as sandbox:
        result = await sandbox.execute("echo 'Hello World'")
        print(result.stdout)

    assert capsys.readouterr().out == "Hello World\n\n"
    assert sandbox.provider_name == "local"
    assert sandbox.status is SandboxStatus.closed


async def test_advanced_configuration_refuses_limits_e2b_does_not_enforce() -> None:
    """E2B sets CPU and memory per template, not per sandbox: the document's limits are refused before
    any call to E2B (no API key needed), instead of being accepted and ignored."""
    from grainchain import Sandbox, SandboxConfig

    # Advanced configuration
    config = SandboxConfig(
        timeout=600, memory_limit="4GB", cpu_limit=2.0, image="python:3.11", environment_vars={"DEBUG": "1"}
    )

    with pytest.raises(CapabilityError, match=r"limits\.(memory|cpu)"):
        async with Sandbox(provider="e2b", config=config) as sandbox:  # noqa: F841 - as written
            # Your code here
            pass
    assert config.memory_limit == 4_000_000_000


async def test_command_execution(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    async with Sandbox() as sandbox:
        await sandbox.make_directory("workspace")
        await sandbox.upload_file("workspace/script.py", SCRIPT)

        result = await sandbox.execute(
            "python script.py --verbose",
            timeout=300,
            # the document: working_dir="/workspace"; on local that is a host path outside the sandbox
            working_dir="workspace",
            environment={"LOG_LEVEL": "DEBUG"},
        )

        print(f"Exit code: {result.return_code}")
        print(f"Output: {result.stdout}")
        print(f"Errors: {result.stderr}")
        print(f"Duration: {result.execution_time}s")

        # the path exactly as in the document is refused, not run somewhere on the host
        with pytest.raises(PathOutsideSandboxError):
            await sandbox.execute("python script.py --verbose", working_dir="/workspace")

    out = capsys.readouterr().out
    assert out.startswith(
        "Exit code: 0\nOutput: args: --verbose\nLOG_LEVEL: DEBUG\ncwd: workspace\n\nErrors: a warning\n\n"
    )
    assert f"Duration: {result.execution_time}s\n" in out
    assert 0 < result.execution_time < 30


async def test_file_operations(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    async with Sandbox() as sandbox:
        # Upload a Python script
        await sandbox.upload_file("script.py", "print('Hello from uploaded script!')")

        # Upload binary data
        with open("data.zip", "rb") as f:
            await sandbox.upload_file("data.zip", f.read(), mode="wb")

        # List files
        files = await sandbox.list_files(".")  # the document: "/workspace" (see the module docstring)
        for file in files:
            print(f"{file.name}: {file.size} bytes")

        # (not in the document: something to download)
        ran = await sandbox.execute(
            "python script.py && python -c 'import json; print(json.dumps({\"ok\": True}))' > output.json"
        )

        # Download results
        result_data = await sandbox.download_file("output.json")

    assert ran.stdout == "Hello from uploaded script!\n"
    zip_size = Path("data.zip").stat().st_size
    script_size = len("print('Hello from uploaded script!')")
    assert capsys.readouterr().out == f"data.zip: {zip_size} bytes\nscript.py: {script_size} bytes\n"
    assert all(isinstance(f, FileInfo) for f in files)
    assert json.loads(result_data) == {"ok": True}


async def test_filesystem_snapshot_restored_in_a_new_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    config = {"name": "demo", "debug": True}
    # the document uses provider="e2b" (planned); the local provider has the same filesystem snapshots
    async with Sandbox() as sandbox:
        # Set up environment
        await sandbox.execute("mkdir -p site-packages/numpy site-packages/pandas")  # for: pip install ...
        await sandbox.upload_file("config.json", json.dumps(config))

        # Create filesystem snapshot
        snapshot_id = await sandbox.create_snapshot()
        print(f"Filesystem snapshot created: {snapshot_id}")

        # Later: restore environment
        async with Sandbox() as new_sandbox:
            await new_sandbox.restore_snapshot(snapshot_id)
            # Environment is restored with packages and files
            restored = json.loads(await new_sandbox.download_file("config.json"))
            packages = sorted(f.name for f in await new_sandbox.list_files("site-packages"))

    assert capsys.readouterr().out == f"Filesystem snapshot created: {snapshot_id}\n"
    assert restored == config
    assert packages == ["numpy", "pandas"]


async def test_snapshot_chains() -> None:
    from grainchain import Sandbox

    async with Sandbox() as sandbox:
        # Base setup
        await sandbox.execute("mkdir -p bin && echo git > bin/git")  # for: apt-get install -y git
        base_snapshot = await sandbox.create_snapshot()

        # Development branch 1
        await sandbox.execute("mkdir repo1 && echo 1 > repo1/README")  # for: git clone repo1.git
        dev1_snapshot = await sandbox.create_snapshot()

        # Reset to base and try different approach
        await sandbox.restore_snapshot(base_snapshot)
        await sandbox.execute("mkdir repo2 && echo 2 > repo2/README")  # for: git clone repo2.git
        dev2_snapshot = await sandbox.create_snapshot()

        # (not in the document: each snapshot holds its branch)
        trees = {}
        for name, snapshot in [("base", base_snapshot), ("dev1", dev1_snapshot), ("dev2", dev2_snapshot)]:
            await sandbox.restore_snapshot(snapshot)
            trees[name] = sorted(f.name for f in await sandbox.list_files())

    assert trees == {"base": ["bin"], "dev1": ["bin", "repo1"], "dev2": ["bin", "repo2"]}


async def test_advanced_snapshotting_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    async def snapshot_workflow():  # type: ignore[no-untyped-def]
        async with Sandbox() as sandbox:  # the document: provider="e2b" (planned)
            # Set up base environment
            await sandbox.execute("mkdir -p node_modules")  # for: apt-get update / install nodejs npm
            base_snapshot = await sandbox.create_snapshot()

            # Try different approaches (for: npm install express / fastify / koa; the second one fails)
            approaches = [
                "mkdir node_modules/express",
                "mkdir node_modules/fastify && exit 1",
                "mkdir node_modules/koa",
            ]

            results = {}
            for approach in approaches:
                # Reset to base state
                await sandbox.restore_snapshot(base_snapshot)

                # Try approach
                result = await sandbox.execute(approach)
                await sandbox.execute("ls node_modules")  # for: npm list --depth=0

                # Save result state
                snapshot_id = await sandbox.create_snapshot()
                results[approach] = {"success": result.success, "snapshot": snapshot_id}

            # Use best approach
            best_approach = max(results.items(), key=lambda x: x[1]["success"])
            await sandbox.restore_snapshot(best_approach[1]["snapshot"])

            print(f"Using best approach: {best_approach[0]}")
            return sorted(f.name for f in await sandbox.list_files("node_modules")), results

    installed, results = await snapshot_workflow()

    assert capsys.readouterr().out == "Using best approach: mkdir node_modules/express\n"
    assert installed == ["express"]
    assert [r["success"] for r in results.values()] == [True, False, True]


async def test_multi_provider_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    async def compare_providers():  # type: ignore[no-untyped-def]
        providers = ["local", "e2b", "morph"]
        results = {}

        for provider in providers:
            try:
                async with Sandbox(provider=provider) as sandbox:
                    start_time = time.time()
                    result = await sandbox.execute('python -c \'print("Hello from", "' + provider + "\")'")
                    duration = time.time() - start_time

                    results[provider] = {
                        "success": result.success,
                        "duration": duration,
                        "output": result.stdout.strip(),
                    }
            except Exception as e:
                results[provider] = {"error": str(e)}

        for provider, result in results.items():
            print(f"{provider}: {result}")
        return results

    results = await compare_providers()

    assert results["local"]["success"] is True
    assert results["local"]["output"] == "Hello from local"
    assert "API key" in results["e2b"]["error"]  # no E2B_API_KEY in the tests' environment
    assert "'morph' is planned but has no adapter yet" in results["morph"]["error"]
    assert capsys.readouterr().out.startswith("local: {'success': True")


def test_basic_execution_workflow_with_asyncio_run(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain import Sandbox

    async def basic_workflow():  # type: ignore[no-untyped-def]
        async with Sandbox() as sandbox:
            # Install dependencies (the document: pip install requests beautifulsoup4; no network here)
            await sandbox.execute("python -c 'import json, html.parser'")

            # Upload script (the document's scraper fetches https://httpbin.org/json)
            script = """
import json

response = {"status_code": 200, "json": {"slideshow": {"title": "Sample"}}}
print(f"Status: {response['status_code']}")
print(f"Data: {response['json']}")
"""
            await sandbox.upload_file("scraper.py", script)

            # Execute script
            result = await sandbox.execute("python scraper.py")
            print(result.stdout)

    asyncio.run(basic_workflow())

    assert capsys.readouterr().out == "Status: 200\nData: {'slideshow': {'title': 'Sample'}}\n\n"


async def test_development_environment_configuration() -> None:
    from grainchain import Sandbox, SandboxConfig

    # For local development and testing
    config = SandboxConfig(timeout=300, auto_cleanup=True)
    sandbox = Sandbox(provider="local", config=config)

    async with sandbox:
        result = await sandbox.execute("echo ready")
        workspace = Path((await sandbox.execute("pwd")).stdout.strip())
        assert sandbox.config.timeout == 300

    assert result.stdout == "ready\n"
    assert not workspace.exists()  # auto_cleanup


# -- blocking: `from grainchain.sync import Sandbox` -------------------------------------------------------


def test_sync_basic_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain.sync import Sandbox

    with Sandbox() as sandbox:
        result = sandbox.execute("echo 'Hello World'")
        print(result.stdout)

    assert capsys.readouterr().out == "Hello World\n\n"
    assert sandbox.status is SandboxStatus.closed


def test_sync_command_execution() -> None:
    from grainchain.sync import Sandbox

    with Sandbox() as sandbox:
        sandbox.make_directory("workspace")
        sandbox.upload_file("workspace/script.py", SCRIPT)
        result = sandbox.execute(
            "python script.py --verbose",
            timeout=300,
            working_dir="workspace",  # the document: "/workspace" (see the module docstring)
            environment={"LOG_LEVEL": "DEBUG"},
        )

    assert result.return_code == 0
    assert result.stdout == "args: --verbose\nLOG_LEVEL: DEBUG\ncwd: workspace\n"
    assert result.stderr == "a warning\n"


def test_sync_file_operations(capsys: pytest.CaptureFixture[str]) -> None:
    from grainchain.sync import Sandbox

    with Sandbox() as sandbox:
        # Upload a Python script
        sandbox.upload_file("script.py", "print('Hello from uploaded script!')")

        # Upload binary data
        with open("data.zip", "rb") as f:
            sandbox.upload_file("data.zip", f.read(), mode="wb")

        # List files
        files = sandbox.list_files(".")  # the document: "/workspace"
        for file in files:
            print(f"{file.name}: {file.size} bytes")

        sandbox.execute("python script.py > output.json")

        # Download results
        result_data = sandbox.download_file("output.json")

    zip_size = Path("data.zip").stat().st_size
    assert capsys.readouterr().out == f"data.zip: {zip_size} bytes\nscript.py: 36 bytes\n"
    assert result_data == b"Hello from uploaded script!\n"


def test_sync_snapshots() -> None:
    from grainchain.sync import Sandbox

    with Sandbox() as sandbox:
        sandbox.execute("mkdir -p bin && echo git > bin/git")
        base_snapshot = sandbox.create_snapshot()
        sandbox.execute("mkdir repo1")
        dev1_snapshot = sandbox.create_snapshot()
        sandbox.restore_snapshot(base_snapshot)
        sandbox.execute("mkdir repo2")
        dev2_snapshot = sandbox.create_snapshot()
        assert sorted(f.name for f in sandbox.list_files()) == ["bin", "repo2"]

        with Sandbox() as new_sandbox:
            new_sandbox.restore_snapshot(dev1_snapshot)
            assert sorted(f.name for f in new_sandbox.list_files()) == ["bin", "repo1"]
            new_sandbox.restore_snapshot(dev2_snapshot)
            assert new_sandbox.download_file("bin/git") == b"git\n"


def test_sync_development_environment_configuration() -> None:
    from grainchain.sync import Sandbox

    config = SandboxConfig(timeout=300, auto_cleanup=True)
    sandbox = Sandbox(provider="local", config=config)

    with sandbox:
        assert sandbox.execute("echo ready").stdout == "ready\n"
    assert sandbox.status is SandboxStatus.closed
