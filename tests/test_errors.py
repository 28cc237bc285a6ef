"""The error tree: every error names provider and operation, and fits the builtin exceptions users catch."""

from __future__ import annotations

import inspect
import re

import pytest

import grainchain
import grainchain.errors as errors
from grainchain.errors import (
    BackendConnectionError,
    BackendTimeoutError,
    CapabilityError,
    CommandError,
    CommandTimeoutError,
    ConfigurationError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    MemoryLimitExceededError,
    NotFoundError,
    OutputLimitExceededError,
    PathOutsideSandboxError,
    PermissionDeniedError,
    ProviderError,
    ProviderNotFoundError,
    RateLimitError,
    RemoteError,
    SandboxNotFoundError,
    SnapshotNotFoundError,
)


def test_every_public_error_is_a_grainchain_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(inspect.isclass(c) and issubclass(c, GrainchainError) for c in classes)
    assert len(classes) == 25


def test_processes_running_error_lists_what_runs() -> None:
    error = errors.ProcessesRunningError([f"pid {n}: sleep 100" for n in range(12)], provider="local")
    assert error.processes == [f"pid {n}: sleep 100" for n in range(12)]
    assert "12 process(es)" in str(error)
    assert "pid 9: sleep 100; ..." in str(error)  # the first ten, then "..."
    assert 'if_processes_running="kill"' in str(error)
    assert error.retryable is False


def test_every_public_error_is_exported_by_the_package() -> None:
    assert set(errors.__all__) <= set(grainchain.__all__)
    assert all(getattr(grainchain, name) is getattr(errors, name) for name in errors.__all__)


def _drawn_tree() -> dict[str, str]:
    """{error: its parent} as the drawing at the top of errors.py shows them."""
    assert errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[str] = []
    for line in errors.__doc__.splitlines():
        found = re.match(r"^    ((?:[│ ]   )*)[├└]── (\w+)", line)
        if found:
            depth = len(found.group(1)) // 4
            stack[depth + 1 :] = [found.group(2)]
            parents[found.group(2)] = stack[depth]
        elif line.strip() == "GrainchainError":
            stack = ["GrainchainError"]
    return parents


def test_the_drawn_tree_is_the_class_tree() -> None:
    """The drawing is the documentation of the tree: every public error is in it, under its real base."""
    drawn = _drawn_tree()
    assert set(drawn) == set(errors.__all__) - {"GrainchainError"}
    for name, parent in drawn.items():
        bases = [b.__name__ for b in getattr(errors, name).__bases__ if issubclass(b, GrainchainError)]
        assert bases == [parent], f"{name} is drawn under {parent} but derives from {bases}"


@pytest.mark.parametrize(
    ("group", "members"),
    [
        (NotFoundError, [SandboxNotFoundError, SnapshotNotFoundError, FileNotFoundInSandboxError]),
        (CommandError, [CommandTimeoutError, OutputLimitExceededError, MemoryLimitExceededError]),
        (RemoteError, [BackendConnectionError, BackendTimeoutError, RateLimitError]),
    ],
)
def test_groups(group: type[GrainchainError], members: list[type[GrainchainError]]) -> None:
    assert issubclass(group, GrainchainError)
    assert all(issubclass(member, group) for member in members)
    others = [getattr(errors, n) for n in errors.__all__ if getattr(errors, n) not in [group, *members]]
    assert not [c.__name__ for c in others if issubclass(c, group)], "the group holds only its members"


@pytest.mark.parametrize(
    "error",
    [
        SandboxNotFoundError("no sandbox gc-1"),
        SnapshotNotFoundError("snap-1"),
        FileNotFoundInSandboxError("/missing"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_one_except_not_found_error_catches_all_three(error: GrainchainError) -> None:
    with pytest.raises(grainchain.NotFoundError) as caught:
        raise error
    assert caught.value is error
    assert caught.value.retryable is False


def test_a_not_found_is_not_a_configuration_or_provider_error() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, NotFoundError):
            assert not issubclass(cls, ConfigurationError | ProviderError | RemoteError)


def test_retryable_flags() -> None:
    assert BackendConnectionError("down").retryable is True
    assert BackendTimeoutError("slow").retryable is True
    assert RateLimitError("wait").retryable is True
    assert RemoteError("x").retryable is True
    assert CommandError("x").retryable is None  # its members differ: a timeout may pass, a limit will not
    assert CommandTimeoutError("late", command="c", timeout=1).retryable is True
    assert OutputLimitExceededError("much", limit=1).retryable is False
    assert MemoryLimitExceededError("big", command="c", limit=1, return_code=137).retryable is False
    assert ProviderError("x").retryable is None
    assert ProviderError("x", retryable=True).retryable is True
    assert BackendConnectionError("x", retryable=False).retryable is False  # an adapter may know better


def test_rate_limit_error_carries_retry_after() -> None:
    err = RateLimitError("slow down", retry_after=2.5, provider="e2b", operation="execute")
    assert (err.retry_after, err.retryable, err.provider) == (2.5, True, "e2b")
    assert RateLimitError("slow down").retry_after is None
    assert str(err) == "slow down [provider=e2b, operation=execute]"


def test_command_errors_carry_the_output_so_far() -> None:
    caught: list[CommandError] = [
        CommandTimeoutError("late", command="c", timeout=1, stdout="a", stderr="b"),
        OutputLimitExceededError("much", limit=1, stdout="a", stderr="b"),
        MemoryLimitExceededError("big", command="c", limit=1, return_code=137, stdout="a", stderr="b"),
    ]
    assert [(e.stdout, e.stderr) for e in caught] == [("a", "b")] * 3
    assert (CommandError("x").stdout, CommandError("x").stderr) == ("", "")


def test_errors_fit_builtin_exceptions() -> None:
    assert issubclass(FileNotFoundInSandboxError, FileNotFoundError)
    assert issubclass(CommandTimeoutError, TimeoutError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(PathOutsideSandboxError, PermissionError)
    assert issubclass(PermissionDeniedError, PermissionError)
    assert issubclass(BackendConnectionError, ConnectionError)
    assert issubclass(BackendTimeoutError, TimeoutError)


def test_message_names_provider_and_operation() -> None:
    err = FileNotFoundInSandboxError("/x", provider="local", operation="download_file")
    assert (
        str(err) == "no such file or directory in the sandbox: '/x' [provider=local, operation=download_file]"
    )
    assert err.retryable is False


def test_capability_error_names_feature_provider_and_who_supports_it() -> None:
    err = CapabilityError(
        "snapshot.memory", "local", operation="create_snapshot", supported_by=["morph", "docker"]
    )
    assert err.feature == "snapshot.memory"
    assert err.supported_by == ["docker", "morph"]
    assert "providers that do: docker, morph" in str(err)
    assert "operation=create_snapshot" in str(err)


def test_timeout_error_carries_partial_output_and_is_retryable() -> None:
    err = CommandTimeoutError("late", command="sleep 9", timeout=1, stdout="so far", stderr="")
    assert (err.stdout, err.timeout, err.retryable) == ("so far", 1, True)


def test_provider_not_found_lists_known_names() -> None:
    err = ProviderNotFoundError("nope", ["local", "docker"])
    assert str(err).startswith("unknown provider 'nope'; known providers: docker, local")
