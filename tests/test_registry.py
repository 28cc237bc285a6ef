"""Providers come from the spec's built-ins and from the `grainchain.providers` entry-point group."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from grainchain import (
    AsyncSandbox,
    CapabilityError,
    ProviderError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    registry,
)
from grainchain.sync import Sandbox as SyncSandbox


def _install_plugin(root: Path, name: str, module_source: str, entry_value: str) -> None:
    """A distribution on sys.path with an entry point: what `pip install` of a plugin leaves behind."""
    (root / f"{name}_plugin.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[grainchain.providers]\n{name} = {entry_value}\n")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    registry.refresh()
    yield root
    monkeypatch.undo()
    registry.refresh()


MINE = """
    from grainchain import ProviderInfo
    from grainchain._async.providers.local import AsyncLocalAdapter

    class AsyncMineAdapter(AsyncLocalAdapter):
        provider_name = "mine"

    PROVIDER = ProviderInfo(
        name="mine",
        summary="local, but declaring only exec and files",
        features={"exec": "native", "files": "native"},
        async_adapter="mine_plugin:AsyncMineAdapter",
    )
"""


async def test_plugin_provider_is_found_and_gated_by_its_declaration(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "mine", MINE, "mine_plugin:PROVIDER")
    assert "mine" in registry.all_providers()
    async with AsyncSandbox("mine") as sandbox:
        assert (await sandbox.execute("echo plugged")).stdout == "plugged\n"
        # the adapter could snapshot (it is the local one), but the declaration says no: the gate wins
        with pytest.raises(CapabilityError) as info:
            await sandbox.create_snapshot()
        assert (info.value.feature, info.value.provider) == ("snapshot.filesystem", "mine")


NARROWING = """
    from grainchain import ProviderInfo
    from grainchain._async.providers.local import AsyncLocalAdapter

    class AsyncProbedAdapter(AsyncLocalAdapter):
        provider_name = "probed"

        @classmethod
        async def missing_features(cls, config, settings):
            return {"snapshot.filesystem": "the backend's store is read-only"}

    PROVIDER = ProviderInfo(
        name="probed",
        summary="declares snapshots, but its backend turns out to lack them",
        features={"exec": "native", "snapshot.filesystem": "native"},
        async_adapter="probed_plugin:AsyncProbedAdapter",
    )
"""


async def test_backend_probe_narrows_a_declaration_and_says_why(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "probed", NARROWING, "probed_plugin:PROVIDER")
    async with AsyncSandbox("probed") as sandbox:
        assert not sandbox.supports("snapshot.filesystem")
        assert sandbox.supports("exec")
        with pytest.raises(CapabilityError, match="not available here: the backend's store is read-only"):
            await sandbox.create_snapshot()
        assert (await sandbox.execute("echo still usable")).stdout == "still usable\n"


def test_plugin_without_sync_adapter_says_so_for_the_blocking_client(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "mine", MINE, "mine_plugin:PROVIDER")
    with pytest.raises(ProviderUnavailableError, match="has no sync adapter"):
        SyncSandbox("mine").start()


def test_broken_plugin_names_itself(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "bad", "raise RuntimeError('boom')\n", "bad_plugin:PROVIDER")
    with pytest.raises(
        ProviderError, match=r"provider plugin 'bad' \(bad_plugin:PROVIDER\) failed to load: boom"
    ):
        registry.all_providers()


def test_plugin_must_not_lie_about_its_name(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "other", MINE, "mine_plugin:PROVIDER")
    with pytest.raises(ProviderError, match="declares the name 'mine'"):
        registry.all_providers()


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(ProviderNotFoundError) as info:
        AsyncSandbox("nope")
    assert info.value.known == ["daytona", "docker", "e2b", "local", "modal", "morph"]


async def test_planned_provider_is_unavailable_with_a_clear_reason() -> None:
    with pytest.raises(ProviderUnavailableError, match="'e2b' is planned but has no adapter yet"):
        await AsyncSandbox("e2b").start()


def test_provider_info_rejects_unknown_feature_names() -> None:
    with pytest.raises(ValueError, match="warp"):
        registry.ProviderInfo(name="x", features={"warp": "native"})
