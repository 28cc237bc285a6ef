"""What `import grainchain` loads, in a fresh interpreter: the error classes, and none of the heavy libraries
(provider SDKs, the CLI's, the benchmark's, the settings', the repository tools'). The facade and the models
load on first use of their names; every public name still resolves, to the same object as before.

Nothing here times anything: the import's budget (issue point 10) is measured by `grainchain benchmark run`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from grainchain._generated.providers import BUILTIN_PROVIDERS

SDK_MODULES = sorted({info.sdk_module for info in BUILTIN_PROVIDERS.values() if info.sdk_module})
# never loaded by `import grainchain`, nor by importing the facade (they load when a provider or a command
# of the CLI needs them)
HEAVY = ["httpx", "typer", "rich", "matplotlib", "yaml", "jsonschema", *SDK_MODULES]
# loaded with the facade (settings, models, the async client) on first use of grainchain.Sandbox & co.
FACADE = ["pydantic", "pydantic_settings", "asyncio"]

PROBE = textwrap.dedent(
    """
    import json, sys

    def loaded():
        return sorted(sys.modules)

    seen = {}
    import grainchain
    seen["import grainchain"] = loaded()
    from grainchain import Sandbox
    seen["from grainchain import Sandbox"] = loaded()
    import grainchain.sync
    seen["import grainchain.sync"] = loaded()
    print(json.dumps(seen))
    """
)


def _loaded(modules: list[str], roots: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in roots)


@pytest.fixture(scope="module")
def seen() -> dict[str, list[str]]:
    """sys.modules after each import of PROBE, in one fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def _run(code: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_provider_sdks_are_known() -> None:
    """The list of SDK modules checked below comes from the spec's providers: make sure it is not empty."""
    assert {"e2b", "modal"} <= set(SDK_MODULES)


def test_import_grainchain_loads_no_heavy_module(seen: dict[str, list[str]]) -> None:
    assert _loaded(seen["import grainchain"], HEAVY) == []


def test_import_grainchain_leaves_the_facade_for_first_use(seen: dict[str, list[str]]) -> None:
    """pydantic, pydantic-settings and asyncio are most of the facade's import time: `import grainchain`
    loads only the errors; grainchain.Sandbox, grainchain.SandboxConfig ... import it when first used."""
    assert _loaded(seen["import grainchain"], FACADE) == []
    assert "grainchain.errors" in seen["import grainchain"]
    assert "grainchain.models" not in seen["import grainchain"]


def test_the_facade_and_the_sync_client_load_no_heavy_module(seen: dict[str, list[str]]) -> None:
    """No provider's SDK, no CLI or benchmark library, until a sandbox of that provider starts."""
    for step in ("from grainchain import Sandbox", "import grainchain.sync"):
        assert _loaded(seen[step], HEAVY) == [], step
        assert not [m for m in seen[step] if m.startswith(("grainchain.cli", "grainchain.benchmark"))], step
        assert not [m for m in seen[step] if m.startswith("grainchain.providers.")], step
    assert "pydantic" in seen["from grainchain import Sandbox"]  # the facade did load


def test_every_public_name_resolves_in_a_fresh_interpreter() -> None:
    """Each name of __all__, by attribute and by `from grainchain import`, to the class of its module."""
    found = _run(
        """
        import json
        import grainchain
        names = {}
        for name in grainchain.__all__:
            value = getattr(grainchain, name)
            names[name] = f"{value.__module__}.{value.__qualname__}"
        from grainchain import *  # noqa: F403
        star = sorted(n for n in grainchain.__all__ if n in globals())
        print(json.dumps({"names": names, "star": star, "dir": dir(grainchain)}))
        """
    )
    import grainchain

    assert sorted(found["names"]) == sorted(grainchain.__all__)
    assert found["star"] == sorted(grainchain.__all__)
    assert set(grainchain.__all__) <= set(found["dir"])
    assert found["names"]["Sandbox"] == "grainchain._generated._async.sandbox.AsyncSandbox"
    assert found["names"]["SandboxConfig"] == "grainchain._generated.models.SandboxConfig"
    assert found["names"]["ExecutionResult"] == "grainchain.models.ExecutionResult"
    assert found["names"]["ProviderInfo"] == "grainchain._provider_info.ProviderInfo"
    assert found["names"]["GrainchainError"] == "grainchain.errors.GrainchainError"


def test_lazy_names_are_the_objects_of_their_modules() -> None:
    import grainchain
    import grainchain.sync
    from grainchain import errors, models
    from grainchain._async.process import AsyncProcessHandle
    from grainchain._generated._async.sandbox import AsyncSandbox
    from grainchain._generated._sync.sandbox import Sandbox as SyncSandbox

    assert grainchain.Sandbox is grainchain.AsyncSandbox is AsyncSandbox
    assert grainchain.AsyncProcessHandle is AsyncProcessHandle
    assert grainchain.sync.Sandbox is SyncSandbox
    for name in models.__all__:
        assert getattr(grainchain, name) is getattr(models, name), name
    for name in errors.__all__:
        assert getattr(grainchain, name) is getattr(errors, name), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    import grainchain

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        _ = grainchain.NoSuchThing
    with pytest.raises(ImportError, match="NoSuchThing"):
        exec("from grainchain import NoSuchThing", {})
