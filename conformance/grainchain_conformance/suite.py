"""The conformance suite as classes to inherit (in the style of fsspec's abstract tests): a provider's own test
file collects the suite's tests against that provider, instead of `pytest --pyargs grainchain_conformance
--grainchain-provider NAME`.

    from grainchain_conformance import ConformanceSuite

    class TestAcme(ConformanceSuite):
        provider = "acme"
        config = {"image": "python:3.12"}   # the SandboxConfig of the suite's sandboxes (default: {})
        clients = "both"                    # or "sync" / "async" (default: --grainchain-client, both)
        thorough = False                    # the Hypothesis budget (default: --grainchain-thorough)

The tests are the suite modules' own functions, as static methods of these classes, and the plugin treats
them as it treats the modules': each runs once per client, judged by the provider's declaration narrowed by
what its backend lacks, with its conformance_exclusions, the hang guard and a per-feature table (one per
class). A provider that cannot start fails the class's tests, saying why. `-k test_exec` selects a module's
tests here too. Parts of the suite inherit alone: `class TestAcme(ExecSuite, FilesSuite)`.

Classes whose name does not start with `Test` are not collected: importing these does not run them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import pytest

from grainchain_conformance import (
    test_declaration,
    test_directories,
    test_examples,
    test_exec,
    test_files,
    test_lifecycle,
    test_paths,
    test_processes,
    test_snapshots,
    test_state_machine,
    test_stdin,
    test_unsupported,
)

C = TypeVar("C", bound=type)


class ProviderSuite:
    """What every part of the suite takes from its subclass. The plugin recognises suite classes by
    `grainchain_conformance_suite` (grainchain_conformance.plugin.suite_class)."""

    grainchain_conformance_suite: ClassVar[bool] = True
    provider: ClassVar[str]  # the name under which grainchain knows the provider (entry point or register())
    config: ClassVar[Mapping[str, Any]] = {}  # SandboxConfig fields (or a SandboxConfig)
    clients: ClassVar[str | None] = None  # "both", "sync" or "async"; None: --grainchain-client
    thorough: ClassVar[bool | None] = None  # None: --grainchain-thorough


def suite_tests(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The test functions a suite module defines (not those it imports)."""
    return {
        name: obj
        for name, obj in vars(module).items()
        if name.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
    }


def _gather(module: ModuleType) -> Callable[[C], C]:
    """Put the module's test functions on the class, as static methods: the same functions, marks and all."""

    def gather(cls: C) -> C:
        for name, function in suite_tests(module).items():
            setattr(cls, name, staticmethod(function))
        return cls

    return gather


@_gather(test_declaration)
class DeclarationSuite(ProviderSuite):
    """The declaration: complete, loadable, never widened (test_declaration.py)."""


@_gather(test_exec)
class ExecSuite(ProviderSuite):
    """Commands: exit codes, output, timeouts, working directories, environment, output limit (test_exec.py)."""


@_gather(test_files)
class FilesSuite(ProviderSuite):
    """File operations and FileInfo against what commands see (test_files.py)."""


@_gather(test_directories)
class DirectoriesSuite(ProviderSuite):
    """Whole directories up and down, exactly, and nothing written outside the target (test_directories.py)."""


@_gather(test_paths)
class PathsSuite(ProviderSuite):
    """Paths leading out of the sandbox, towards a canary on the client's host (test_paths.py)."""

    @pytest.fixture
    def canary(self) -> Iterator[Path]:
        yield from test_paths.host_canary()


@_gather(test_processes)
class ProcessesSuite(ProviderSuite):
    """Background processes (test_processes.py)."""


@_gather(test_stdin)
class StdinSuite(ProviderSuite):
    """Standard input of commands and background processes (test_stdin.py)."""


@_gather(test_lifecycle)
class LifecycleSuite(ProviderSuite):
    """Attributes, close, auto_cleanup, keep_alive, connect and list (test_lifecycle.py)."""


@_gather(test_snapshots)
class SnapshotsSuite(ProviderSuite):
    """Snapshots restore whole trees; listing, deleting, wake_up (test_snapshots.py)."""


@_gather(test_examples)
class ExamplesSuite(ProviderSuite):
    """Timeouts, large data, concurrency, streaming, limits, ports (test_examples.py)."""


@_gather(test_state_machine)
class StateMachineSuite(ProviderSuite):
    """Random sequences of operations against a model (test_state_machine.py)."""


@_gather(test_unsupported)
class UnsupportedSuite(ProviderSuite):
    """Every feature unsupported here raises CapabilityError (test_unsupported.py)."""


class ConformanceSuite(
    DeclarationSuite,
    ExecSuite,
    FilesSuite,
    DirectoriesSuite,
    PathsSuite,
    ProcessesSuite,
    StdinSuite,
    LifecycleSuite,
    SnapshotsSuite,
    ExamplesSuite,
    StateMachineSuite,
    UnsupportedSuite,
):
    """The whole suite against `provider` (test_coverage.py is not in it: it checks the suite, not a
    provider)."""
