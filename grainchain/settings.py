"""User settings: explicit arguments > environment (GRAINCHAIN_*) > config file > defaults.

The config file is TOML at $GRAINCHAIN_CONFIG, else the user config dir (~/.config/grainchain/config.toml):

    default_provider = "local"
    state_dir = "/var/lib/grainchain"
    namespace = "my-project"   # snapshots and docker sandboxes seen by list/delete/cleanup (default: per state_dir)
    snapshot_ttl = 604800      # seconds until `grainchain snapshots prune` deletes a snapshot (default: never)

    [sandbox]            # defaults for every SandboxConfig field the caller leaves unset
    timeout = 120
    memory_limit = "2GB"

    [providers.docker]   # defaults for a provider's provider_config keys (credentials too: the lowest
    image = "python:3.12-slim"   # priority, after provider_config and the environment)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from grainchain._generated.models import SandboxConfig
from grainchain.errors import ConfigurationError

ENV_PREFIX = "GRAINCHAIN_"


def config_file_path() -> Path:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        return Path(explicit)
    return _default_config_file(*(os.environ.get(name) for name in ("HOME", "XDG_CONFIG_HOME", "APPDATA")))


@functools.lru_cache(maxsize=4)
def _default_config_file(*where: str | None) -> Path:
    """platformdirs' answer, remembered per value of the variables it reads (it takes ~0.1 ms, once per
    Sandbox() otherwise)."""
    return platformdirs.user_config_path("grainchain") / "config.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    default_provider: str = Field("local", description="Provider used when none is named.")
    state_dir: Path = Field(
        default_factory=lambda: platformdirs.user_state_path("grainchain"),
        description="Where providers keep workspaces and snapshots.",
    )
    namespace: str | None = Field(
        None,
        description="Whose snapshots (and docker sandboxes) these are: only this namespace's are listed, "
        "deleted and cleaned up (default: a tag of state_dir, see grainchain/_ownership.py).",
    )
    snapshot_ttl: float | None = Field(
        None,
        gt=0,
        description="Seconds a new snapshot lives: `grainchain snapshots prune` deletes it after (default: "
        "it never expires).",
    )
    sandbox: dict[str, Any] = Field(default_factory=dict, description="Defaults for SandboxConfig fields.")
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per provider: defaults for its provider_config keys."
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or len(value) > 128 or not value.isprintable():
            raise ValueError("must be 1 to 128 printable characters")
        return value

    @field_validator("default_provider")
    @classmethod
    def _provider_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a provider, e.g. 'local'")
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env loading: the original project leaked a .env into every sandbox.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file_path()))


# Settings are read for every new Sandbox: remember the last reading while its sources are unchanged.
_last_reading: tuple[Any, Settings] | None = None


def _sources(path: Path) -> Any:
    """What the settings are read from: the GRAINCHAIN_* environment and the config file's identity."""
    try:
        stat = path.stat()
        file_key: Any = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        file_key = None
    # HOME and XDG_*: where the default state directory and config file are
    # (keys first: reading every value of os.environ costs more than the rest of Sandbox())
    names = sorted(k for k in os.environ if k == "HOME" or k.upper().startswith((ENV_PREFIX, "XDG_")))
    env = tuple((k, os.environ[k]) for k in names)
    return (str(path), file_key, env)


def load_settings(**overrides: Any) -> Settings:
    """The settings in force now; invalid ones raise ConfigurationError naming each field and source."""
    global _last_reading
    path = config_file_path()
    sources = None if overrides else _sources(path)
    if sources is not None and _last_reading is not None and _last_reading[0] == sources:
        return _last_reading[1]
    try:
        settings = Settings(**overrides)
        if sources is not None:
            _last_reading = (sources, settings)
        return settings
    except ValidationError as exc:
        raise ConfigurationError(
            _explain(exc, f"environment ({ENV_PREFIX}*) or config file {path}")
        ) from None
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigurationError(f"cannot read config file {path}: {exc}") from None


def resolve_config(config: SandboxConfig | None, settings: Settings) -> SandboxConfig:
    """The caller's config, with the config file's [sandbox] defaults for every field the caller left unset."""
    if not settings.sandbox:
        return config or SandboxConfig()
    explicit = config.model_dump(include=config.model_fields_set) if config else {}
    try:
        return SandboxConfig.model_validate({**settings.sandbox, **explicit})
    except ConfigurationError as exc:  # (SandboxConfig raises it for every invalid field)
        where = f"[sandbox] of {config_file_path()}"
        raise ConfigurationError(exc.message.replace("in SandboxConfig:", f"in {where}:", 1)) from None


def validate_config(data: dict[str, Any]) -> SandboxConfig:
    """Build a SandboxConfig from plain data, raising ConfigurationError with one line per problem."""
    return SandboxConfig.model_validate(data)  # ConfigurationError naming each invalid field


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "(top)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message} (got {error.get('input')!r})")
    return "\n".join(lines)
