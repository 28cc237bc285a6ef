"""Settings precedence (argument > environment > config file > default) and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from grainchain import AsyncSandbox, ConfigurationError, ProviderNotFoundError, SandboxConfig
from grainchain._types import parse_byte_size
from grainchain.settings import config_file_path, load_settings, validate_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GB", 4_000_000_000),
        ("512MB", 512_000_000),
        ("1.5GiB", 1_610_612_736),
        ("256m", 256 * 2**20),  # docker's single letters: powers of 1024, as docker reads them
        ("1G", 2**30),
        ("4gb", 4_000_000_000),
        ("2 GiB", 2 * 1024**3),
        (1024, 1024),
    ],
)
def test_byte_sizes_are_parsed(text: str | int, expected: int) -> None:
    assert parse_byte_size(text) == expected
    assert SandboxConfig(memory_limit=text).memory_limit == expected


@pytest.mark.parametrize("bad", ["4 gigs", "GB", "-1GB", "", "1e9", True, 0])
def test_bad_byte_sizes_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:  # (SandboxConfig: ConfigurationError for any bad field)
        SandboxConfig(memory_limit=bad)
    message = str(info.value)
    assert "memory_limit" in message
    assert "accepted" in message or "positive" in message


def test_validate_config_raises_configuration_error_naming_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_config({"memory_limit": "4 gigs"})
    assert "memory_limit: cannot read '4 gigs' as a size; accepted:" in str(info.value)


def test_unknown_config_field_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="memory_limt"):
        SandboxConfig(memory_limt="4GB")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("timeout", -1, "a positive number of seconds up to 604800"),
        ("timeout", True, "a positive number of seconds"),
        ("cpu_limit", 0, "a number of cores more than 0 and at most 4096"),
        ("cpu_limit", "two", "a number of cores"),
        ("memory_limit", "256 megs", "accepted: an integer number of bytes"),
        ("output_limit", 0, "a size must be positive"),
        ("environment_vars", {"1A": "x"}, "not a valid variable name (letters, digits, _"),
        ("working_directory", "a\0b", "a string without NUL characters"),
        ("image", "", "a non-empty string"),
        ("ports", [70000], "a TCP port number (an int from 1 to 65535)"),
        ("auto_cleanup", "perhaps", "a valid boolean"),
        ("provider_config", 3, "a valid dictionary"),
        ("memory_limt", "1GB", "the fields of SandboxConfig: timeout, working_directory"),
    ],
)
def test_every_invalid_field_is_a_configuration_error_naming_field_value_and_what_is_accepted(
    field: str, value: object, accepted: str
) -> None:
    for attempt in (
        lambda: SandboxConfig(**{field: value}),
        lambda: SandboxConfig.model_validate({field: value}),
        lambda: validate_config({field: value}),
        lambda: AsyncSandbox(config={field: value}),  # a dict config, checked the same way
    ):
        with pytest.raises(ConfigurationError) as info:
            attempt()
        message = str(info.value)
        assert isinstance(info.value, ValueError)  # as pydantic's ValidationError was
        assert not isinstance(info.value, ValidationError)
        assert message.count("invalid settings") == 1, message  # not an error wrapped in an error
        assert f"  {field}" in message, message
        assert accepted in message, message
        shown = value[0] if isinstance(value, list) else value  # (a list's bad item)
        assert repr(shown)[:20] in message, message


def test_assigning_an_invalid_field_is_refused_the_same_way() -> None:
    config = SandboxConfig()
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        config.timeout = -1
    assert config.timeout == 300
    config.memory_limit = "1g"  # type: ignore[assignment]
    assert config.memory_limit == 2**30


def test_json_and_dict_configs_are_checked_as_objects_are() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        SandboxConfig.model_validate_json('{"timeout": -5}')
    with pytest.raises(ConfigurationError, match="a mapping of its fields"):
        SandboxConfig.model_validate(["timeout", 5])
    with pytest.raises(ConfigurationError, match="config must be a SandboxConfig, a mapping"):
        AsyncSandbox(config="timeout=5")  # type: ignore[arg-type]
    assert AsyncSandbox(config={"timeout": 5, "memory_limit": "1g"}).config == SandboxConfig(
        timeout=5, memory_limit=2**30
    )


def test_config_and_execute_judge_environment_names_by_one_rule() -> None:
    from grainchain._checks import check_env_names
    from grainchain.errors import InvalidArgumentError

    for names in ({"1A": "x"}, {"A-B": "x"}, {"": "x"}, {"A=B": "x"}):
        with pytest.raises(InvalidArgumentError) as call:
            check_env_names("execute", "environment", names)  # what execute(environment=...) runs
        with pytest.raises(ConfigurationError) as config:
            SandboxConfig(environment_vars=names)
        assert call.value.message.split(": ", 1)[1] in config.value.message
    SandboxConfig(environment_vars={"_A1": "x", "a": ""})


def test_default_provider_is_local() -> None:
    assert AsyncSandbox().provider_name == "local"


def test_environment_overrides_default_and_argument_overrides_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRAINCHAIN_DEFAULT_PROVIDER", "nope")
    with pytest.raises(ProviderNotFoundError, match=r"known providers: .*local"):
        AsyncSandbox()
    assert AsyncSandbox("local").provider_name == "local"


def test_config_file_supplies_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('default_provider = "local"\n[sandbox]\ntimeout = 7\nenvironment_vars = {A = "1"}\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    sandbox = AsyncSandbox(config=SandboxConfig(environment_vars={"B": "2"}))
    assert sandbox.config.timeout == 7  # from the file
    assert sandbox.config.environment_vars == {"B": "2"}  # the caller's field wins whole


def test_environment_beats_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('default_provider = "from-file"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    assert load_settings().default_provider == "from-file"
    monkeypatch.setenv("GRAINCHAIN_DEFAULT_PROVIDER", "local")
    assert load_settings().default_provider == "local"


def test_malformed_config_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text("default_provider = \n")
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match=str(config)):
        load_settings()


def test_bad_sandbox_defaults_in_config_file_are_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[sandbox]\nmemory_limit = "lots"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match=r"(?s)\[sandbox\] of .*memory_limit: cannot read 'lots'"):
        AsyncSandbox()


def test_unknown_setting_in_environment_file_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('default_provder = "local"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match="default_provder"):
        load_settings()


def test_settings_are_read_again_when_a_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "grainchain.toml"
    config.write_text('default_provider = "docker"\n')
    monkeypatch.setenv("GRAINCHAIN_CONFIG", str(config))
    first = load_settings()
    assert first.default_provider == "docker"
    assert load_settings() is first  # unchanged sources: the same reading, not parsed again
    config.write_text('default_provider = "local"  # edited\n')
    assert load_settings().default_provider == "local"
    monkeypatch.setenv("GRAINCHAIN_DEFAULT_PROVIDER", "e2b")
    assert load_settings().default_provider == "e2b"
    with pytest.raises(ValidationError):
        first.default_provider = "morph"  # shared readings are frozen


def test_the_default_config_file_follows_home_and_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path is remembered (platformdirs is slow), but per value of what platformdirs reads."""
    monkeypatch.delenv("GRAINCHAIN_CONFIG")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    assert config_file_path() == tmp_path / "a" / ".config" / "grainchain" / "config.toml"
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    assert config_file_path() == tmp_path / "b" / ".config" / "grainchain" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_file_path() == tmp_path / "xdg" / "grainchain" / "config.toml"
    (tmp_path / "xdg" / "grainchain").mkdir(parents=True)
    (tmp_path / "xdg" / "grainchain" / "config.toml").write_text('default_provider = "docker"\n')
    assert load_settings().default_provider == "docker"
