"""Providers come from the spec's built-ins, from the `grainchain.providers` entry-point group and from
`registry.register()`.

Tests of discovery install real plugins (a module and a .dist-info on sys.path); tests of what the facade
does with a declaration use the in-memory provider (tests/providers/memory, conftest's memory_provider).
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import FLAVOURS, opened
from conftest import MemoryProvider

from grainchain import (
    AsyncSandbox,
    CapabilityError,
    Feature,
    ProviderError,
    ProviderNotFoundError,
    ProviderUnavailableError,
    SandboxConfig,
    SnapshotNotFoundError,
    registry,
)
from grainchain.sync import Sandbox as SyncSandbox
from tests.providers.memory import declaration
from tests.providers.memory import sdk as memsdk


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
    from grainchain.providers.local._async.adapter import AsyncLocalAdapter

    class AsyncMineAdapter(AsyncLocalAdapter):
        provider_name = "mine"

    PROVIDER = ProviderInfo(
        name="mine",
        summary="local, but declaring only exec and files",
        features={"exec": "native", "files": "native"},
        async_adapter="mine_plugin:AsyncMineAdapter",
    )
"""


async def test_plugin_provider_is_found_through_its_entry_point(plugin_dir: Path) -> None:
    _install_plugin(plugin_dir, "mine", MINE, "mine_plugin:PROVIDER")
    assert registry.get_provider("mine").summary == "local, but declaring only exec and files"
    assert "mine" in registry.providers_supporting(Feature.FILES)
    async with AsyncSandbox("mine") as sandbox:
        assert (await sandbox.execute("echo plugged")).stdout == "plugged\n"


async def test_the_declaration_gates_what_the_adapter_could_do(memory_provider: MemoryProvider) -> None:
    memory_provider({"exec": "native", "files": "native"})
    async with AsyncSandbox("memory") as sandbox:
        # the adapter could snapshot, but the declaration says no: the gate wins, before any SDK call
        with pytest.raises(CapabilityError) as info:
            await sandbox.create_snapshot()
        assert (info.value.feature, info.value.provider) == ("snapshot.filesystem", "memory")
        assert (await sandbox.execute("echo still usable")).stdout == "still usable\n"
    assert not [call for call in memsdk.CALLS if call[1] == "snapshot"]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_backend_probe_narrows_a_declaration_and_says_why(
    memory_provider: MemoryProvider, flavour: str
) -> None:
    memory_provider()  # declares snapshot.filesystem native; this backend lacks it:
    config = SandboxConfig(provider_config={"missing": {"snapshot.filesystem": "the store is read-only"}})
    async with opened(flavour, "memory", config) as sandbox:
        levels = sandbox.capabilities  # (a property: the same on both clients)
        assert (levels[Feature.SNAPSHOT_FILESYSTEM], levels[Feature.EXEC]) == ("unsupported", "native")
        with pytest.raises(CapabilityError, match="not available here: the store is read-only"):
            await sandbox.create_snapshot()
        assert (await sandbox.execute("echo still usable")).stdout == "still usable\n"
    assert not [call for call in memsdk.CALLS if call[1] == "snapshot"]


def test_provider_without_sync_adapter_says_so_for_the_blocking_client(
    memory_provider: MemoryProvider,
) -> None:
    memory_provider(sync_adapter=None)
    with pytest.raises(ProviderUnavailableError, match="'memory' has no sync adapter"):
        SyncSandbox("memory").start()


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
    with pytest.raises(ProviderUnavailableError, match="'morph' is planned but has no adapter yet"):
        await AsyncSandbox("morph").start()


def test_provider_info_rejects_unknown_feature_names() -> None:
    with pytest.raises(ValueError, match="warp"):
        registry.ProviderInfo(name="x", features={"warp": "native"})


# -- registry.register() --------------------------------------------------------------------------------------


@pytest.fixture
def unregister() -> Iterator[list[str]]:
    """Names to unregister after the test."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(ProviderError):
            registry.unregister(name)


def test_a_registered_provider_is_known_everywhere(unregister: list[str]) -> None:
    info = declaration({"exec": "native", "files": "emulated"}, name="registered-one")
    registry.register(info)
    unregister.append(info.name)
    assert registry.all_providers()["registered-one"] is info
    assert registry.get_provider("registered-one") is info
    assert "registered-one" in registry.providers_supporting(Feature.FILES)
    assert "registered-one" not in registry.providers_supporting(Feature.SNAPSHOT_FILESYSTEM)
    registry.refresh()  # forgets plugins, not registered providers
    assert registry.get_provider("registered-one") is info
    assert registry.unregister("registered-one") is info
    with pytest.raises(ProviderNotFoundError):
        registry.get_provider("registered-one")


def test_register_refuses_a_taken_name_unless_told_to_replace(unregister: list[str]) -> None:
    first, second = declaration(name="twice"), declaration({"exec": "native"}, name="twice")
    registry.register(first)
    unregister.append("twice")
    with pytest.raises(ProviderError, match="'twice': the name is registered already; pass replace=True"):
        registry.register(second)
    assert registry.get_provider("twice") is first
    registry.register(second, replace=True)
    assert registry.get_provider("twice") is second


@pytest.mark.parametrize("replace", [False, True])
def test_a_built_in_provider_cannot_be_registered_over(replace: bool) -> None:
    local = registry.get_provider("local")
    with pytest.raises(ProviderError, match="'local': that is a built-in provider, which cannot be replaced"):
        registry.register(declaration(name="local"), replace=replace)
    assert registry.get_provider("local") is local
    with pytest.raises(ProviderError, match="cannot unregister 'local': it is a built-in provider"):
        registry.unregister("local")


def test_register_over_a_plugin_needs_replace_and_unregister_brings_it_back(
    plugin_dir: Path, unregister: list[str]
) -> None:
    _install_plugin(plugin_dir, "mine", MINE, "mine_plugin:PROVIDER")
    plugin = registry.get_provider("mine")
    with pytest.raises(ProviderError, match=r"the name is an installed plugin's \(grainchain.providers\)"):
        registry.register(declaration(name="mine"))
    mine = declaration(name="mine")
    registry.register(mine, replace=True)
    unregister.append("mine")
    assert registry.get_provider("mine") is mine
    registry.unregister("mine")
    assert registry.get_provider("mine") is plugin
    with pytest.raises(ProviderError, match="cannot unregister 'mine': it is not added with register"):
        registry.unregister("mine")


def test_register_takes_a_provider_info_only() -> None:
    with pytest.raises(TypeError, match=r"takes a grainchain\.ProviderInfo, got dict"):
        registry.register({"name": "x", "features": {}})  # type: ignore[arg-type]


# -- operations that need any one of several features (the spec's `any_of`) ---------------------------------

SNAPSHOT_KINDS = """
    from grainchain import ProviderInfo
    from grainchain.providers.local._async.adapter import AsyncLocalAdapter
    from grainchain.providers.local._sync.adapter import LocalAdapter

    LACKS = {lacks!r}

    class AsyncKindsAdapter(AsyncLocalAdapter):
        provider_name = {name!r}

        @classmethod
        async def missing_features(cls, *args, **kwargs):
            return dict(LACKS)  # not the local probe: it would narrow snapshot.memory where CRIU is missing

    class KindsAdapter(LocalAdapter):
        provider_name = {name!r}

        @classmethod
        def missing_features(cls, *args, **kwargs):
            return dict(LACKS)

    PROVIDER = ProviderInfo(
        name={name!r},
        summary="local, declaring the snapshot kinds of the test",
        features={features!r},
        async_adapter="{name}_plugin:AsyncKindsAdapter",
        sync_adapter="{name}_plugin:KindsAdapter",
    )
"""


def _snapshot_kinds_provider(
    root: Path, name: str, filesystem: str, memory: str, lacks: dict[str, str] | None = None
) -> None:
    features = {"exec": "native", "snapshot.filesystem": filesystem, "snapshot.memory": memory}
    source = SNAPSHOT_KINDS.format(name=name, features=features, lacks=lacks or {})
    _install_plugin(root, name, source, f"{name}_plugin:PROVIDER")


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_memory_snapshots_alone_list_restore_and_delete_past_the_gate(
    plugin_dir: Path, flavour: str
) -> None:
    """With memory snapshots only (morph's declaration), the snapshot operations reach the adapter: its
    answers (a list, SnapshotNotFoundError for an unknown id) come from the provider, not the gate."""
    _snapshot_kinds_provider(plugin_dir, "memonly", filesystem="unsupported", memory="native")
    async with opened(flavour, "memonly") as sandbox:
        assert await sandbox.list_snapshots() == []
        for operation in ("restore_snapshot", "delete_snapshot"):
            with pytest.raises(SnapshotNotFoundError) as info:
                await getattr(sandbox, operation)("no-such-snapshot")
            assert info.value.operation == operation  # raised by the (local) adapter: the gate let it by
        with pytest.raises(CapabilityError) as refused:  # the kind it lacks is still gated
            await sandbox.create_snapshot()
        assert refused.value.feature == "snapshot.filesystem"


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_without_any_snapshot_kind_the_snapshot_operations_raise_capability_error(
    plugin_dir: Path, flavour: str
) -> None:
    _snapshot_kinds_provider(plugin_dir, "nosnap", filesystem="unsupported", memory="unsupported")
    calls = {
        "list_snapshots": (),
        "restore_snapshot": ("no-such-snapshot",),
        "delete_snapshot": ("no-such-snapshot",),
    }
    async with opened(flavour, "nosnap") as sandbox:
        for operation, args in calls.items():
            with pytest.raises(CapabilityError) as info:
                await getattr(sandbox, operation)(*args)
            error = info.value
            # named after the first alternative; the hint lists them all
            assert (error.feature, error.provider, error.operation) == (
                "snapshot.filesystem",
                "nosnap",
                operation,
            )
            assert error.hint == "needs any one of snapshot.filesystem, snapshot.memory"
            assert "local" in error.supported_by
        assert (await sandbox.execute("echo still usable")).stdout == "still usable\n"


async def test_any_of_gate_gives_why_the_backend_lacks_each_alternative(plugin_dir: Path) -> None:
    lacks = {"snapshot.memory": "no CRIU on this host"}
    _snapshot_kinds_provider(plugin_dir, "memlost", filesystem="unsupported", memory="native", lacks=lacks)
    async with AsyncSandbox("memlost") as sandbox:
        with pytest.raises(CapabilityError) as info:
            await sandbox.list_snapshots()
    assert info.value.feature == "snapshot.filesystem"
    assert info.value.hint == (
        "needs any one of snapshot.filesystem, snapshot.memory; "
        "not available here: snapshot.memory: no CRIU on this host"
    )
