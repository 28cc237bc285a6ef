"""Argument checks the generated facade runs before calling a provider (names from the spec's `check`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from grainchain.errors import InvalidArgumentError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
WRITE_MODES = ("w", "wb", "a", "ab")
E = TypeVar("E", bound=Enum)


def check_non_empty(operation: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(
            f"{name} must be a non-empty string, got {value!r}", argument=name, operation=operation
        )
    if "\0" in value:
        raise InvalidArgumentError(
            f"{name} must not contain NUL characters", argument=name, operation=operation
        )


def check_positive(operation: str, name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgumentError(
            f"{name} must be a positive number of seconds (or None), got {value!r}",
            argument=name,
            operation=operation,
        )


def check_env_names(operation: str, name: str, value: Mapping[str, str] | None) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(
            f"{name} must be a mapping of str to str, got {type(value).__name__}",
            argument=name,
            operation=operation,
        )
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidArgumentError(
                f"{name}: {key!r} is not a valid variable name (letters, digits, _; not starting with a digit)",
                argument=name,
                operation=operation,
            )
        if not isinstance(val, str) or "\0" in val:
            raise InvalidArgumentError(
                f"{name}[{key!r}] must be a string without NUL characters, got {val!r}",
                argument=name,
                operation=operation,
            )


def check_write_mode(operation: str, name: str, value: str) -> None:
    if value not in WRITE_MODES:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, WRITE_MODES))}, got {value!r}",
            argument=name,
            operation=operation,
        )


def as_enum(operation: str, name: str, enum: type[E], value: object) -> E:
    """The enum member a value names ("memory" or SnapshotKind.memory), so adapters only see members."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise InvalidArgumentError(
            f"{name} must be one of {allowed}, got {value!r}", argument=name, operation=operation
        ) from None
