"""Argument checks: what the generated facade runs before calling a provider (names from the spec's `check`),
and the same rules for SandboxConfig (grainchain/_types.py), so that config and call arguments are judged once.

Every refusal is an InvalidArgumentError (a ValueError) naming the argument, the bad value (shortened) and what
is accepted; SandboxConfig turns it into a ConfigurationError. The limits:

* a command at most MAX_COMMAND_BYTES (UTF-8), the smallest any provider takes (Modal: 64 KiB for all of a
  command's arguments), so that a command that runs on one provider runs on all;
* each environment entry `NAME=value` at most MAX_ARGUMENT_BYTES: Linux refuses one string over 128 KiB
  (MAX_ARG_STRLEN); the rest is left for the providers' wrappers;
* a call's environment, and SandboxConfig.environment_vars, each at most MAX_ENVIRONMENT_BYTES in all
  (together under the kernel's ARG_MAX of 2 MiB);
* a path at most MAX_PATH_BYTES, each of its names at most MAX_NAME_BYTES (PATH_MAX, NAME_MAX);
* a timeout: a positive number of seconds up to MAX_TIMEOUT, or math.inf for no limit (None: the default).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import TypeVar

from grainchain.errors import InvalidArgumentError, PathOutsideSandboxError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
WRITE_MODES = ("w", "wb", "a", "ab")
IF_PROCESSES_RUNNING = ("kill", "refuse")  # grainchain._types.IfProcessesRunning
MAX_COMMAND_BYTES = 60 * 1024
MAX_ARGUMENT_BYTES = 120 * 1024
MAX_ENVIRONMENT_BYTES = 512 * 1024
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
MAX_CPUS = 4096  # what any SandboxConfig.cpu_limit may ask; each provider refuses more than it has at create
MAX_TIMEOUT = 7 * 24 * 3600.0  # a week; longer waits overflow some platforms' clocks and poll()
E = TypeVar("E", bound=Enum)


def shorten(value: object, limit: int = 60) -> str:
    """repr(value), cut to about `limit` characters (a 200 KiB value is not repeated in a message)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}...{text[-8:]} ({type(value).__name__} of {_length(value)})"


def _length(value: object) -> str:
    try:
        return f"length {len(value)}"  # type: ignore[arg-type]
    except TypeError:
        return "?"


def _refuse(operation: str, name: str, value: object, accepted: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{name} must be {accepted}, got {shorten(value)}", argument=name, operation=operation
    )


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _unicode(operation: str, name: str, value: str) -> None:
    """Text every provider can pass on: UTF-8, so no lone surrogates (os.fsdecode's escapes included)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(
            operation,
            name,
            value,
            "valid Unicode text (no lone surrogates such as '\\udcff'; send bytes as bytes)",
        ) from None


def check_non_empty(operation: str, name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _refuse(operation, name, value, "a non-empty string")
    if "\0" in value:
        raise _refuse(operation, name, value, "a string without NUL characters")


def check_optional_non_empty(operation: str, name: str, value: object) -> None:
    """None, or a string as check_non_empty takes it."""
    if value is not None:
        check_non_empty(operation, name, value)


def check_port(operation: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _refuse(operation, name, value, "a TCP port number (an int from 1 to 65535)")


def check_command(operation: str, name: str, value: object) -> None:
    """A non-empty shell command without NUL, at most MAX_COMMAND_BYTES."""
    check_non_empty(operation, name, value)
    assert isinstance(value, str)
    _unicode(operation, name, value)
    if _utf8_size(value) > MAX_COMMAND_BYTES:
        raise _refuse(operation, name, value, f"at most {MAX_COMMAND_BYTES} bytes (UTF-8) long")


def check_path(operation: str, name: str, value: object) -> None:
    """A non-empty path without NUL, at most MAX_PATH_BYTES, no name in it over MAX_NAME_BYTES. A name that is
    not UTF-8 comes as os.fsdecode gives it (its bytes as surrogate escapes): providers that pass only UTF-8
    refuse it with InvalidArgumentError (the facade's _errors)."""
    check_non_empty(operation, name, value)
    assert isinstance(value, str)
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise _refuse(operation, name, value, "a path (bytes only as os.fsdecode's escapes)") from None
    if _utf8_size(value) > MAX_PATH_BYTES:
        raise _refuse(operation, name, value, f"a path of at most {MAX_PATH_BYTES} bytes")
    for part in value.split("/"):
        if _utf8_size(part) > MAX_NAME_BYTES:
            raise _refuse(
                operation, name, value, f"a path whose names are at most {MAX_NAME_BYTES} bytes each"
            )


def check_optional_path(operation: str, name: str, value: object) -> None:
    """None, or a path as check_path takes it."""
    if value is not None:
        check_path(operation, name, value)


def check_positive(operation: str, name: str, value: object) -> None:
    """A timeout: None, math.inf (no limit), or a positive number of seconds up to MAX_TIMEOUT."""
    if value is None:
        return
    accepted = f"a positive number of seconds up to {MAX_TIMEOUT:g}, math.inf for no limit, or None"
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:  # (nan is not > 0)
        raise _refuse(operation, name, value, accepted)
    if value > MAX_TIMEOUT and not math.isinf(value):
        raise _refuse(operation, name, value, accepted)


def check_cpu_limit(operation: str, name: str, value: object) -> None:
    """A number of cores: more than 0, at most MAX_CPUS."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_CPUS  # (nan is not > 0)
    ):
        raise _refuse(operation, name, value, f"a number of cores more than 0 and at most {MAX_CPUS}")


def no_limit(timeout: float | None) -> float | None:
    """A checked timeout as waits take it: math.inf is None (no limit)."""
    return None if timeout is None or math.isinf(timeout) else timeout


def check_callback(operation: str, name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise _refuse(operation, name, value, "a callable taking one str (or None)")


def check_content(operation: str, name: str, value: object) -> None:
    if not isinstance(value, str | bytes | bytearray | memoryview):
        raise _refuse(operation, name, value, "str (written as UTF-8) or bytes")
    if isinstance(value, str):
        _unicode(operation, name, value)


def check_optional_content(operation: str, name: str, value: object) -> None:
    if value is not None:
        check_content(operation, name, value)


def check_flag(operation: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _refuse(operation, name, value, "True or False")


def check_local_path(operation: str, name: str, value: object) -> None:
    """A path of the client's machine: a non-empty str or os.PathLike of str, without NUL."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _refuse(operation, name, value, "a path of this machine (a non-empty str or os.PathLike)")
    if "\0" in value:
        raise _refuse(operation, name, value, "a path without NUL characters")


def check_env_names(operation: str, name: str, value: object) -> None:
    """None, or a mapping of variable names (letters, digits, _) to strings without NUL, each entry at most
    MAX_ARGUMENT_BYTES and all at most MAX_ENVIRONMENT_BYTES."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise _refuse(operation, name, value, "a mapping of str to str")
    total = 0
    for key, val in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise InvalidArgumentError(
                f"{name}: {shorten(key)} is not a valid variable name "
                "(letters, digits, _; not starting with a digit)",
                argument=name,
                operation=operation,
            )
        if not isinstance(val, str) or "\0" in val:
            raise _refuse(operation, f"{name}[{key!r}]", val, "a string without NUL characters")
        _unicode(operation, f"{name}[{key!r}]", val)
        size = _utf8_size(key) + 1 + _utf8_size(val)
        if size > MAX_ARGUMENT_BYTES:
            raise _refuse(
                operation, f"{name}[{key!r}]", val, f"at most {MAX_ARGUMENT_BYTES} bytes with its name"
            )
        total += size
    if total > MAX_ENVIRONMENT_BYTES:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_ENVIRONMENT_BYTES} bytes in all, got {total}",
            argument=name,
            operation=operation,
        )


def check_write_mode(operation: str, name: str, value: object) -> None:
    if value not in WRITE_MODES:
        raise _refuse(operation, name, value, f"one of {', '.join(map(repr, WRITE_MODES))}")


def check_if_running(operation: str, name: str, value: object) -> None:
    if value not in IF_PROCESSES_RUNNING:
        raise _refuse(operation, name, value, f"one of {', '.join(map(repr, IF_PROCESSES_RUNNING))}")


def as_enum(operation: str, name: str, enum: type[E], value: object) -> E:
    """The enum member a value names ("memory" or SnapshotKind.memory), so adapters only see members."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum)
        raise _refuse(operation, name, value, f"one of {allowed}") from None


def start_directory(workspace: str, working_directory: str | None, provider: str) -> str:
    """Where commands start: SandboxConfig.working_directory (relative to the workspace, or absolute) as an
    absolute path, which must lie in the workspace (every provider: else PathOutsideSandboxError at create)."""
    start = posixpath.normpath(posixpath.join(workspace, working_directory or "."))
    start = "/" + start.lstrip("/")  # (normpath keeps a leading "//")
    root = posixpath.normpath(workspace)
    if start != root and not start.startswith(root.rstrip("/") + "/"):
        raise PathOutsideSandboxError(
            str(working_directory),
            f"SandboxConfig.working_directory must lie in the workspace {root}",
            provider=provider,
            operation="create",
        )
    return start


CHECKS: dict[str, Callable[[str, str, object], None]] = {
    "non_empty": check_non_empty,
    "optional_non_empty": check_optional_non_empty,
    "port": check_port,
    "command": check_command,
    "path": check_path,
    "optional_path": check_optional_path,
    "positive": check_positive,
    "callback": check_callback,
    "content": check_content,
    "env_names": check_env_names,
    "write_mode": check_write_mode,
    "if_running": check_if_running,
    "local_path": check_local_path,
}
"""The spec's check names and their functions (codegen calls them by name)."""
