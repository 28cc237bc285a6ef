"""Small value types shared by the generated models and the adapters."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

from grainchain._checks import check_env_names, check_path, check_positive, no_limit, shorten
from grainchain.errors import ConfigurationError

OutputCallback = Callable[[str], object]
"""Receives each decoded chunk of a command's stdout or stderr as it arrives."""

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_BYTE_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
BYTE_SIZE_FORMS = (
    'an integer number of bytes, or a number with a unit: "512MB", "4GB", "1.5GiB", "256m" '
    "(units B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024; "
    "k, m, g, t = KB, MB, GB, TB)"
)


def parse_byte_size(value: object) -> int:
    """Parse "4GB", "512MiB", 1024 … into bytes; anything else raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}; accepted: {BYTE_SIZE_FORMS}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    if isinstance(value, str):
        match = _BYTE_SIZE.match(value)
        unit = match.group(2).lower() if match else ""
        if match and unit in _UNITS:
            size = int(float(match.group(1)) * _UNITS[unit])
            if size <= 0:
                raise ValueError(f"size must be positive, got {value!r}")
            return size
    raise ValueError(f"cannot read {value!r} as a size; accepted: {BYTE_SIZE_FORMS}")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size), PlainSerializer(int)]
"""A positive number of bytes, given as an int or a string with a unit (see BYTE_SIZE_FORMS)."""

PortNumber = Annotated[int, Field(ge=1, le=65535)]
"""A TCP port number."""


# -- SandboxConfig: the argument checks of grainchain/_checks.py, and ConfigurationError for every refusal --


def _timeout(value: float) -> float | None:
    check_positive("", "timeout", value)
    return no_limit(value)


def _environment(value: dict[str, str]) -> dict[str, str]:
    check_env_names("", "environment_vars", value)
    return value


def _working_directory(value: str) -> str:
    check_path("", "working_directory", value)
    return value


Timeout = Annotated[float, AfterValidator(_timeout)]
"""Seconds, positive, up to grainchain._checks.MAX_TIMEOUT; math.inf is kept as None (no limit)."""

EnvironmentVars = Annotated[dict[str, str], AfterValidator(_environment)]
"""Variable names (letters, digits, _) to strings without NUL, within the size limits of _checks."""

WorkingDirectory = Annotated[str, AfterValidator(_working_directory)]
"""A path without NUL within PATH_MAX / NAME_MAX (where it may lie is the provider's check at create)."""


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
        message = error["msg"].removeprefix("Value error, ")
        if ", got " not in message:  # (the checks of grainchain/_checks.py name the value themselves)
            message += f" (got {shorten(error.get('input'))})"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


class ConfigModel(BaseModel):
    """The base of SandboxConfig: any invalid field raises ConfigurationError (naming the field, the value and
    what is accepted), when built, validated or assigned, as the config file and provider_config do."""

    @model_validator(mode="wrap")
    @classmethod
    def _configuration_error(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise ConfigurationError(explain(exc, cls.__name__)) from None
