"""What every adapter over a cloud SDK does with the SDK's exceptions: map them into grainchain's tree at
the call that raised them, keeping the SDK's exception as `__cause__`. Each provider's `_sdk.py` brings the
exception types its SDK raises and its mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from grainchain.errors import GrainchainError

Mapping = Callable[..., GrainchainError]  # (exc, what, *, path=None, sandbox=None) → the grainchain error


class Translator:
    """`with translated("upload file", path=p, sandbox=s): ...` raises the mapped error of what the SDK
    raised inside (grainchain's own errors pass through)."""

    def __init__(self, sdk_errors: tuple[type[BaseException], ...], mapped: Mapping) -> None:
        self._sdk_errors = sdk_errors
        self._mapped = mapped

    @contextlib.contextmanager
    def __call__(self, what: str, *, path: str | None = None, sandbox: str | None = None) -> Iterator[None]:
        try:
            yield
        except GrainchainError:
            raise
        except self._sdk_errors as exc:
            raise self._mapped(exc, what, path=path, sandbox=sandbox) from exc
