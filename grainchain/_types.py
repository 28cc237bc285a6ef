"""Small value types shared by the generated models and the adapters."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer

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
