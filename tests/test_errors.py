"""The error tree: every error names provider and operation, and fits the builtin exceptions users catch."""

from __future__ import annotations

import inspect

import grainchain.errors as errors
from grainchain.errors import (
    CapabilityError,
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    GrainchainError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    ProviderNotFoundError,
)


def test_every_public_error_is_a_grainchain_error() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(inspect.isclass(c) and issubclass(c, GrainchainError) for c in classes)
    assert len(classes) == 17


def test_errors_fit_builtin_exceptions() -> None:
    assert issubclass(FileNotFoundInSandboxError, FileNotFoundError)
    assert issubclass(CommandTimeoutError, TimeoutError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(PathOutsideSandboxError, PermissionError)


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
