"""Small value types shared by the generated models and the adapters."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError

from grainchain._checks import (
    check_cpu_limit,
    check_env_names,
    check_non_empty,
    check_path,
    check_port,
    check_positive,
    no_limit,
    shorten,
)
from grainchain.errors import ConfigurationError

OutputCallback = Callable[[str], object]
# a directory of the client's machine (upload_directory / download_directory)
LocalPath = str | os.PathLike[str]
"""Receives each decoded chunk of a command's stdout or stderr as it arrives."""

IfProcessesRunning = Literal["kill", "refuse"]
"""What restore_snapshot does when processes run in the sandbox: end them, or refuse (ProcessesRunningError)."""

_UNITS = {
    "": 1,
    "b": 1,
    # SI: powers of 1000
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    # IEC: powers of 1024
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    # docker's single letters (`docker run -m 256m`: 256 MiB), either case: powers of 1024 as docker reads them
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_BYTE_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
BYTE_SIZE_FORMS = (
    'an integer number of bytes, or a number with a unit: "512MB", "4GB", "1.5GiB", "256m" '
    "(B; KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024; "
    "docker's k, m, g, t, either case = KiB, MiB, GiB, TiB)"
)


def parse_byte_size(value: object) -> int:
    """Parse "4GB", "512MiB", 1024 … into bytes; anything else raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}; accepted: {BYTE_SIZE_FORMS}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value}; accepted: {BYTE_SIZE_FORMS}")
        return value
    if isinstance(value, str):
        match = _BYTE_SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match and unit in _UNITS:
            size = int(float(match.group(1)) * _UNITS[unit])
            if size <= 0:
                raise ValueError(f"a size must be positive, got {value!r}; accepted: {BYTE_SIZE_FORMS}")
            return size
    raise ValueError(f"cannot read {value!r} as a size; accepted: {BYTE_SIZE_FORMS}")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size), PlainSerializer(int)]
"""A positive number of bytes, given as an int or a string with a unit (see BYTE_SIZE_FORMS)."""


@dataclass(frozen=True)
class ResourceBounds:
    """What a provider can give one sandbox here (an adapter's `resource_bounds`); None: no bound it knows.
    The facade refuses a SandboxConfig outside them before create, with ConfigurationError naming the field,
    the value, the bound and `why`."""

    min_memory: int | None = None
    """The least SandboxConfig.memory_limit, in bytes."""
    min_memory_why: str = ""
    max_cpus: float | None = None
    """The most SandboxConfig.cpu_limit, in cores (the machine's, for a provider that runs on it)."""
    max_cpus_why: str = ""


# -- SandboxConfig: the argument checks of grainchain/_checks.py, and ConfigurationError for every refusal --
# (before validators: the checks see the value as given, so that True is not taken for 1 second or 1 core)


def _port(value: object) -> int:
    check_port("", "port", value)
    assert isinstance(value, int)
    return value


def _timeout(value: object) -> object:
    check_positive("", "timeout", value)
    return value


def _cpu_limit(value: object) -> float:
    check_cpu_limit("", "cpu_limit", value)
    assert isinstance(value, int | float)
    return float(value)


def _environment(value: object) -> object:
    check_env_names("", "environment_vars", value)
    return value


def _working_directory(value: object) -> object:
    check_path("", "working_directory", value)
    return value


def _image(value: object) -> object:
    check_non_empty("", "image", value)
    return value


PortNumber = Annotated[int, BeforeValidator(_port)]
"""A TCP port number (an int from 1 to 65535)."""

Timeout = Annotated[float, BeforeValidator(_timeout), AfterValidator(no_limit)]
"""Seconds, positive, up to grainchain._checks.MAX_TIMEOUT; math.inf is kept as None (no limit)."""

CpuLimit = Annotated[float, BeforeValidator(_cpu_limit)]
"""Cores, more than 0 and at most grainchain._checks.MAX_CPUS (what a provider can honour: checked at create)."""

EnvironmentVars = Annotated[dict[str, str], BeforeValidator(_environment)]
"""Variable names (letters, digits, _) to strings without NUL, within the size limits of _checks."""

WorkingDirectory = Annotated[str, BeforeValidator(_working_directory)]
"""A path without NUL within PATH_MAX / NAME_MAX (where it may lie is the provider's check at create)."""

ImageName = Annotated[str, BeforeValidator(_image)]
"""A non-empty image or template name without NUL."""


def _json_name(value: str) -> str:
    # names that are not UTF-8 are str with surrogate escapes (os.fsdecode): JSON shows their bytes as \xNN
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


FileName = Annotated[str, PlainSerializer(_json_name, when_used="json")]
"""A path or name of a file. In Python, bytes that are not UTF-8 are surrogate escapes (os.fsdecode: pass the
value back to any file operation to reach the same file); in JSON they are written as `\\xNN`."""


def explain(exc: ValidationError, source: str) -> str:
    """One line per problem of a ValidationError: the field, what is wrong and the value (shortened)."""
    lines = [f"invalid settings in {source}:"]
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top)"
        message = error["msg"].removeprefix("Value error, ").removeprefix(f"{where}: ")
        got = shorten(error.get("input"))
        if ", got " not in message and got not in message:  # (most checks name the value themselves)
            message += f" (got {got})"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


class ConfigModel(BaseModel):
    """The base of SandboxConfig: any invalid field raises ConfigurationError (also a ValueError, naming the
    field, the value and what is accepted) when built, validated or assigned, as the config file and
    provider_config do; never pydantic's ValidationError.

    The conversion is outside pydantic's validation: a ValueError raised inside it (ConfigurationError is
    one) would be wrapped into a ValidationError again. Inside another model, SandboxConfig's errors are
    that model's ValidationError, as usual."""

    model_config = ConfigDict(validate_assignment=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _refusal(exc, type(self).__name__, type(self).model_fields) from None

    # not a "custom" __init__ to pydantic (as RootModel's): else validation itself calls it, and the
    # ConfigurationError it raises would come out wrapped in a ValidationError
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        if not isinstance(obj, cls | Mapping):
            raise ConfigurationError(
                f"a {cls.__name__} is made of a mapping of its fields, got {shorten(obj)}"
            )
        try:
            return super().model_validate(obj, **options)
        except ValidationError as exc:
            raise _refusal(exc, cls.__name__, cls.model_fields) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **options: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **options)
        except ValidationError as exc:
            raise _refusal(exc, cls.__name__, cls.model_fields) from None

    @classmethod
    def model_validate_strings(cls, obj: Any, **options: Any) -> Self:
        try:
            return super().model_validate_strings(obj, **options)
        except ValidationError as exc:
            raise _refusal(exc, cls.__name__, cls.model_fields) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _refusal(exc, type(self).__name__, type(self).model_fields) from None


def _refusal(exc: ValidationError, source: str, fields: Iterable[str] = ()) -> ConfigurationError:
    message = explain(exc, source)
    if fields and any(error["type"] == "extra_forbidden" for error in exc.errors()):
        message += f"\n  (the fields of {source}: {', '.join(fields)})"
    return ConfigurationError(message)
