"""A provider from a separate, pip-installed package runs through the conformance suite with the documented
commands, and grainchain needs no change for it: the package registers itself under the
`grainchain.providers` entry point and nothing else (docs/writing-a-provider.md).

The package is built with setuptools and installed by pip (no network: --no-build-isolation, --no-deps) into
a directory that the commands get on PYTHONPATH. They run in a directory of their own, as a provider's author
would run them, so grainchain's own pytest configuration does not apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _support import grainchain_script

from grainchain._generated.features import Feature
from grainchain.registry import get_provider

PYPROJECT = """
    [build-system]
    requires = ["setuptools>=70.1"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "thirdparty-provider"
    version = "1.0"
    dependencies = ["grainchain"]

    [project.entry-points."grainchain.providers"]
    thirdparty = "thirdparty_provider:PROVIDER"

    [tool.setuptools]
    py-modules = ["thirdparty_provider"]
"""

MODULE = '''
    """A grainchain provider from another package: the local provider's adapters under another name."""

    from grainchain import ProviderInfo
    from grainchain.providers.local._async.adapter import AsyncLocalAdapter
    from grainchain.providers.local._sync.adapter import LocalAdapter


    class AsyncThirdPartyAdapter(AsyncLocalAdapter):
        provider_name = "thirdparty"


    class ThirdPartyAdapter(LocalAdapter):
        provider_name = "thirdparty"


    PROVIDER = ProviderInfo(
        name="thirdparty",
        summary="host processes in a private workspace, from a third-party package",
        features={FEATURES},
        async_adapter="thirdparty_provider:AsyncThirdPartyAdapter",
        sync_adapter="thirdparty_provider:ThirdPartyAdapter",
    )
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built and installed by pip into a fresh directory: what `pip install` leaves behind."""
    root = tmp_path_factory.mktemp("thirdparty")
    package = root / "thirdparty-provider"
    package.mkdir()
    (package / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    # the local provider's declaration, written out as plain strings, as a third party would write it
    features = {f.value: level.value for f, level in get_provider("local").features.items()}
    source = textwrap.dedent(MODULE).replace("{FEATURES}", json.dumps(features))
    (package / "thirdparty_provider.py").write_text(source)
    target = root / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-build-isolation", "--no-input", "--target", str(target), str(package)),
        ],
        check=True,
        timeout=120,
    )
    assert (target / "thirdparty_provider.py").is_file()
    [dist_info] = target.glob("thirdparty_provider-1.0.dist-info")
    assert "thirdparty = thirdparty_provider:PROVIDER" in (dist_info / "entry_points.txt").read_text()
    return target


def _run(command: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)  # GRAINCHAIN_STATE_DIR: the test's (conftest.py)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop("GRAINCHAIN_CONFORMANCE_PROVIDER", None)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a whole suite run
def test_installed_package_passes_the_suite_through_pytest(site: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pytest", "--pyargs", "grainchain_conformance"]
    # the sync client and a few modules: what is checked here is the plugin's installation, not the suite
    command += ["-k", "test_declaration or test_exec or test_files"]
    command += [
        "--grainchain-provider",
        "thirdparty",
        "--grainchain-client",
        "sync",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    result = _run(command, site, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "grainchain conformance: thirdparty" in result.stdout  # the plugin's per-feature table
    assert " failed" not in result.stdout.splitlines()[-1], output
    assert " passed" in result.stdout.splitlines()[-1], output


@pytest.mark.slow
@pytest.mark.timeout(600)  # a whole suite run
def test_installed_package_passes_the_suite_through_the_command(site: Path, tmp_path: Path) -> None:
    listed = _run([grainchain_script(), "providers", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "thirdparty" in {record["name"] for record in json.loads(listed.stdout)}

    result = _run(
        [
            grainchain_script(),
            "conformance",
            "thirdparty",
            "--",
            "--grainchain-client",
            "sync",
            "-k",
            "test_exec",
        ],
        site,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    local = get_provider("local")
    supported = sum(local.supports(f) for f in Feature)
    [totals] = [line for line in result.stdout.splitlines() if line.startswith("features declared:")]
    assert totals.startswith(
        f"features declared: {supported} supported / {len(Feature) - supported} unsupported;"
    )
    assert totals.endswith("; failed: 0")
    assert result.stdout.rstrip().endswith("conformance of 'thirdparty': passed")
