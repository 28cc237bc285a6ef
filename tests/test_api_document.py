"""The examples of the API document (reference/grainchain-api-features.md) that use the default or the local
provider, run as written: first with `from grainchain import Sandbox` (async), then with the blocking client
`from grainchain.sync import Sandbox`.

Where an example cannot run unchanged on the local provider, the change is the smallest possible and a
comment says why: `/workspace` (a path of container providers; on local it is a host path outside the
sandbox) becomes the workspace-relative `workspace`, and commands that need the network or root
(apt-get, pip install, git clone, npm) become harmless commands with the same shape.

The examples call `python` and `pip` as written: a local sandbox's Python is the interpreter running the
tests, in a virtual environment of its own (grainchain/providers/local/_python.py). Every test runs in both
isolation modes (the settings file's [providers.local] isolation); tests/test_local_isolation.py runs the
`/workspace` examples verbatim isolated. The document's `pip install requests beautifulsoup4` runs verbatim
twice: against a package index on 127.0.0.1 serving wheels the test writes (offline), and against the real
index when it is reachable.
"""

from __future__ import annotations

import asyncio
import configparser
import functools
import http.server
import json
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _wheels import wheel

from grainchain import (
    CapabilityError,
    FileInfo,
    FileNotFoundInSandboxError,
    SandboxConfig,
    SandboxStatus,
)
from grainchain.providers.local._isolation import namespaces_unavailable

SCRIPT = """\
import os, sys
print("args:", " ".join(sys.argv[1:]))
print("LOG_LEVEL:", os.environ.get("LOG_LEVEL"))
print("cwd:", os.path.basename(os.getcwd()))
print("a warning", file=sys.stderr)
"""


ISOLATIONS = [
    pytest.param(
        "namespaces",
        marks=pytest.mark.skipif(namespaces_unavailable() is not None, reason=f"{namespaces_unavailable()}"),
    ),
    "none",
]


def write_settings(tmp_path: Path, isolation: str, sandbox: str = "") -> None:
    """The config file every Sandbox() of the test reads: the isolation mode, and [sandbox] defaults."""
    settings = tmp_path / "config.toml"
    settings.write_text(f'[sandbox]\n{sandbox}[providers.local]\nisolation = "{isolation}"\n')


@pytest.fixture(autouse=True, params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The isolation mode of every local sandbox of the test, and the user's current directory (the
    examples open "data.zip" there)."""
    cwd = tmp_path / "host"
    cwd.mkdir()
    with zipfile.ZipFile(cwd / "data.zip", "w") as archive:
        archive.writestr("inside.txt", "zipped")
    monkeypatch.chdir(cwd)
    write_settings(tmp_path, request.param)
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(tmp_path / "config.toml"))
    return str(request.param)


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


async def test_command_execution(capsys: pytest.CaptureFixture[str], isolation: str) -> None:
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

        if isolation == "none" and not Path("/workspace").exists():
            # the path exactly as in the document: without isolation the host's /workspace, as `cd` takes it
            with pytest.raises(FileNotFoundInSandboxError):
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


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (a sandbox with the host network reaches it) serving a directory: its
    URL and the directory. Stands in for https://httpbin.org and, offline, for the package index."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "json").write_text(json.dumps({"slideshow": {"title": "Sample"}}))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()
    thread.join()


# What the document's scraper needs of requests and bs4, as wheels (the offline test's package index).
FAKE_REQUESTS = """\
import json
import urllib.request


class Response:
    def __init__(self, status_code, body):
        self.status_code, self._body = status_code, body

    def json(self):
        return json.loads(self._body)


def get(url):
    with urllib.request.urlopen(url) as answer:
        return Response(answer.status, answer.read())
"""


def run_basic_workflow(httpbin: str) -> None:
    """The document's basic execution workflow as written (the scraper's https://httpbin.org/json
    replaced by `httpbin`)."""
    from grainchain import Sandbox

    async def basic_workflow():  # type: ignore[no-untyped-def]
        async with Sandbox() as sandbox:
            # Install dependencies
            await sandbox.execute("pip install requests beautifulsoup4")

            # Upload script
            script = """
import requests
from bs4 import BeautifulSoup

response = requests.get('https://httpbin.org/json')
print(f"Status: {response.status_code}")
print(f"Data: {response.json()}")
"""
            script = script.replace("https://httpbin.org/json", httpbin)  # (not in the document)
            await sandbox.upload_file("scraper.py", script)

            # Execute script
            result = await sandbox.execute("python scraper.py")
            print(result.stdout)

    asyncio.run(basic_workflow())


WORKFLOW_OUTPUT = "Status: 200\nData: {'slideshow': {'title': 'Sample'}}\n\n"


def test_basic_execution_workflow_with_asyncio_run(
    capsys: pytest.CaptureFixture[str], isolation: str, tmp_path: Path, local_server: tuple[str, Path]
) -> None:
    """Offline: the settings file points the sandbox's pip at wheels on a local server (PIP_NO_INDEX,
    PIP_FIND_LINKS); the example's code is unchanged."""
    url, served = local_server
    (served / "wheels").mkdir()
    for name, data in (
        wheel("requests", "2.99.0", {"requests/__init__.py": FAKE_REQUESTS}),
        wheel("beautifulsoup4", "4.99.0", {"bs4/__init__.py": "class BeautifulSoup:\n    pass\n"}),
    ):
        (served / "wheels" / name).write_bytes(data)
    pip_settings = f'PIP_NO_INDEX = "1", PIP_FIND_LINKS = "{url}/wheels/"'
    write_settings(tmp_path, isolation, f"environment_vars = {{ {pip_settings} }}\n")

    run_basic_workflow(f"{url}/json")

    assert capsys.readouterr().out == WORKFLOW_OUTPUT


@functools.cache
def index_unreachable() -> str | None:
    """Why a sandbox's pip cannot reach its package index (None when it can): the index pip's
    system-wide configuration names (a sandbox reads /etc, with no PIP_* variables and no proxy), else
    PyPI."""
    index = "https://pypi.org/simple"
    for path in ("/etc/xdg/pip/pip.conf", "/etc/pip.conf"):  # pip's order: the later one wins
        parser = configparser.ConfigParser()
        parser.read(path)
        index = parser.get("global", "index-url", fallback=index)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(f"{index.rstrip('/')}/requests/", timeout=10).close()
    except OSError as exc:
        return f"the package index {index} is not reachable from here: {exc}"
    return None


@pytest.mark.slow
def test_basic_execution_workflow_against_the_package_index(
    capsys: pytest.CaptureFixture[str], local_server: tuple[str, Path]
) -> None:
    """The document's workflow with the real requests and beautifulsoup4 from the package index (only
    the scraper's URL is local)."""
    if reason := index_unreachable():
        pytest.skip(reason)
    url, _ = local_server

    run_basic_workflow(f"{url}/json")

    assert capsys.readouterr().out == WORKFLOW_OUTPUT


async def test_a_long_running_python_process_in_the_background() -> None:
    """The start of the document's memory snapshot example (`provider="morph"` there; the local provider
    runs the command the same way): `python long_computation.py &` returns at once, the process runs on."""
    from grainchain import Sandbox

    computation = (
        "import time\nfor i in range(600):\n    open('progress', 'w').write(str(i))\n    time.sleep(0.05)\n"
    )
    async with Sandbox() as sandbox:
        await sandbox.upload_file("long_computation.py", computation)  # (not in the document)

        # Start a long-running process
        started = await sandbox.execute("python long_computation.py &")

        progress = b""
        for _ in range(400):  # (not in the document: it runs on)
            progress = (
                await sandbox.download_file("progress") if await sandbox.file_exists("progress") else b""
            )
            if progress and int(progress) >= 3:
                break
            await asyncio.sleep(0.05)

    assert started.return_code == 0
    assert started.execution_time < 10
    assert int(progress) >= 3


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
