"""Typed provider_config: wrong keys and types fail at Sandbox(...), credentials resolve in order and never
show, the API document's keys are accepted as written, and sandboxes share one backend per provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, SecretStr

from grainchain import AsyncSandbox, ConfigurationError, SandboxConfig
from grainchain._async import backend as backends
from grainchain._provider_config import ProviderConfig, parse_provider_config
from grainchain.providers.docker.config import DockerConfig
from grainchain.settings import load_settings
from grainchain.sync import Sandbox


class CloudConfig(ProviderConfig):
    api_key: SecretStr | None = Field(None, json_schema_extra={"env": "ACME_API_KEY"})
    region: str = "eu"
    vcpus: int = 1


@pytest.mark.parametrize(
    ("provider_config", "names"),
    [
        ({"isolaton": "none"}, ["unknown key 'isolaton'", "Valid keys: disk_limit, isolation, network"]),
        ({"pids_limit": "many"}, ["'pids_limit'", "valid integer", "'many'"]),
        ({"pids_limit": True}, ["'pids_limit'"]),
        ({"network": "bridge"}, ["'network'", "'host' or 'none'"]),
        ({"disk_limit": "lots"}, ["'disk_limit'", "cannot read 'lots' as a size"]),
    ],
)
def test_a_wrong_key_or_type_fails_when_the_sandbox_is_made(
    provider_config: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Sandbox("local", SandboxConfig(provider_config=provider_config))  # no start(): nothing ran
    assert info.value.provider == "local"
    for name in names:
        assert name in str(info.value)


def test_docker_config_refuses_unknown_keys_before_the_engine_is_asked() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown key .imagee.*Valid keys: build_context"):
        AsyncSandbox("docker", SandboxConfig(provider_config={"imagee": "python"}))


def test_the_api_documents_docker_keys_are_accepted_as_written(tmp_path: Path) -> None:
    options = DockerConfig.model_validate(
        {
            "dockerfile": "./custom.Dockerfile",
            "volumes": {str(tmp_path): "/container/path"},
            "ports": {"8080": "8080"},
            "network": "bridge",
        }
    )
    assert options.volumes == [f"{tmp_path}:/container/path"]
    assert options.ports == {8080: 8080}
    assert options.network == "bridge"


def test_credentials_resolve_argument_then_provider_config_then_environment_then_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def key(**kwargs: Any) -> str | None:
        return parse_provider_config(CloudConfig, "acme", **kwargs).secret("api_key")

    file = {"api_key": "from-file", "region": "us"}
    assert key(raw={}, file_defaults=file) == "from-file"
    monkeypatch.setenv("ACME_API_KEY", "from-env")
    assert key(raw={}, file_defaults=file) == "from-env"
    assert key(raw={"api_key": "from-config"}, file_defaults=file) == "from-config"
    assert key(raw={"api_key": "from-config"}, file_defaults=file, arguments={"api_key": "arg"}) == "arg"
    # other keys: the file's table is their default, provider_config wins
    assert parse_provider_config(CloudConfig, "acme", {}, file).region == "us"  # type: ignore[attr-defined]
    assert parse_provider_config(CloudConfig, "acme", {"region": "ap"}, file).region == "ap"  # type: ignore[attr-defined]


def test_a_credential_never_shows_in_a_repr_or_an_error() -> None:
    options = parse_provider_config(CloudConfig, "acme", {"api_key": "sk-very-secret"})
    assert "sk-very-secret" not in repr(options)
    assert "sk-very-secret" not in str(options.model_dump())
    with pytest.raises(ConfigurationError) as info:
        parse_provider_config(CloudConfig, "acme", {"api_key": ["sk-very-secret"], "vcpus": "x"})
    assert "sk-very-secret" not in str(info.value)
    assert "'api_key'" in str(info.value)
    assert "'vcpus'" in str(info.value)


def test_the_config_files_provider_table_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text('[providers.local]\nisolation = "none"\n[providers.docker]\nimagee = "x"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config_file))
    monkeypatch.setenv("GRAINCHAIN_STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    with Sandbox("local", settings=settings) as sandbox:
        assert sandbox._options.isolation == "none"  # type: ignore[attr-defined]
        # the adapter runs it so: without namespaces the working directory is the host path
        assert sandbox.execute("pwd").stdout.strip() != "/workspace"
        assert str(tmp_path / "state") in sandbox.execute("pwd").stdout
    with pytest.raises(ConfigurationError, match="unknown key 'imagee'"):
        Sandbox("docker", settings=settings)


async def test_sandboxes_share_one_backend_which_the_last_one_closes(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    none = SandboxConfig(provider_config={"isolation": "none"})
    first = await AsyncSandbox("local", none, settings=settings).start()
    second = await AsyncSandbox("local", none, settings=settings).start()
    try:
        assert first._adapter is not None
        assert second._adapter is not None
        shared = first._adapter.backend
        assert shared is not None
        assert shared is second._adapter.backend
        await first.aclose()
        assert not shared.closed
    finally:
        await first.aclose()
        await second.aclose()
    assert shared.closed
    assert not [entry for entry in backends._pool.values() if entry[0] is shared]


async def test_backends_are_not_shared_across_event_loops(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    none = SandboxConfig(provider_config={"isolation": "none"})

    def in_another_loop() -> object:
        async def make() -> object:
            async with AsyncSandbox("local", none, settings=settings) as sandbox:
                assert sandbox._adapter is not None
                return sandbox._adapter.backend

        return asyncio.run(make())

    async with AsyncSandbox("local", none, settings=settings) as here:
        assert here._adapter is not None
        other = await asyncio.to_thread(in_another_loop)
        assert other is not here._adapter.backend


async def test_an_explicit_backend_is_shared_and_left_open(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    async with await backends.AsyncBackend.open("local", {"isolation": "none"}, settings=settings) as backend:
        none = SandboxConfig(provider_config={"isolation": "none"})
        async with AsyncSandbox(config=none, backend=backend) as sandbox:
            assert sandbox.provider_name == "local"
            assert sandbox._adapter is not None
            assert sandbox._adapter.backend is backend
        assert not backend.closed
        assert [info.sandbox_id for info in await AsyncSandbox.list_sandboxes(backend=backend)] == []
        with pytest.raises(ConfigurationError, match="'local'"):
            AsyncSandbox("docker", backend=backend)
    assert backend.closed


class _FakeModalImage:  # what a modal.Image looks like to a check that must not import modal
    pass


_FakeModalImage.__module__ = "modal.image"


@pytest.mark.parametrize(
    ("provider", "provider_config"),
    [  # the API document's examples, as written
        ("e2b", {"template": "custom-nodejs-template", "api_key": "your-e2b-api-key"}),
        ("morph", {"image_id": "morphvm-python", "vcpus": 2, "memory": 2048, "disk_size": 10240}),
        ("modal", {"image": _FakeModalImage(), "token_id": "id", "token_secret": "secret"}),
        (
            "docker",
            {
                "dockerfile": "./custom.Dockerfile",
                "volumes": {"/host/path": "/container/path"},
                "ports": {"8080": "8080"},
                "network": "bridge",
            },
        ),
    ],
)
def test_the_api_documents_provider_configs_are_accepted_and_typos_are_not(
    provider: str, provider_config: dict[str, Any]
) -> None:
    AsyncSandbox(provider, SandboxConfig(provider_config=provider_config))
    typo = {**provider_config, "tempalte": "x"}
    with pytest.raises(ConfigurationError, match="unknown key 'tempalte'"):
        AsyncSandbox(provider, SandboxConfig(provider_config=typo))


def test_modal_image_must_be_an_image_or_a_name() -> None:
    with pytest.raises(ConfigurationError, match=r"'image': must be a modal\.Image or a registry image name"):
        AsyncSandbox("modal", SandboxConfig(provider_config={"image": 42}))


def test_every_provider_declares_a_model_whose_credentials_match_the_spec() -> None:
    from grainchain._generated.providers import BUILTIN_PROVIDERS

    for info in BUILTIN_PROVIDERS.values():
        model = info.load_config_model()
        assert info.config_model is not None, info.name
        assert set(model.credential_env().values()) == set(info.credentials_env), info.name
