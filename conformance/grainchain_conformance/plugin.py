"""pytest plugin of the conformance suite (registered under pytest11, so it loads wherever grainchain is
installed; it stays inert unless conformance tests are collected).

Options: --grainchain-provider NAME (default: $GRAINCHAIN_CONFORMANCE_PROVIDER, else local),
--grainchain-config JSON (SandboxConfig of the sandboxes the suite creates), --grainchain-client
(both, sync or async: which clients drive the tests; default both), --grainchain-thorough,
--grainchain-hang-timeout SECONDS, --grainchain-report PATH (the per-feature results as JSON),
--grainchain-no-table. A provider that cannot be used (unknown, no adapter, sandbox creation fails) or a bad
config stops the run as a pytest usage error.

Every test runs once per client. A test that runs longer than the hang timeout fails with the grainchain
operations running at that moment (the state machine's limit grows with its budget).

The same tests run inherited, in a provider's own test file (grainchain_conformance.suite): in a subclass of
ConformanceSuite (or of its parts), the class's `provider`, `config`, `clients` and `thorough` replace the
options, and a provider that cannot start fails that class's tests instead of stopping the run. Everything
else below applies to them alike; the table comes once per class.

Each conformance test is marked with the features it checks. A test whose feature the provider declares
unsupported is skipped with that reason (test_unsupported checks the CapabilityError instead); a test the
provider excludes (ProviderInfo.conformance_exclusions) is skipped with the provider's reason. The summary at
the end lists, per feature, what was checked.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from grainchain_conformance.target import ConformanceTarget

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
_TARGET_KEY = pytest.StashKey["ConformanceTarget"]()
# the targets of suite classes, by (provider, config, thorough): the target, or why it cannot start
_CLASS_TARGETS_KEY = pytest.StashKey[dict[tuple[str, str, bool], "ConformanceTarget | str"]]()
# Results go to one table per owner: "" for the tests run by the options, a suite class's qualified name
# for its tests. Per owner and feature: outcome -> count; the owner and features of each collected test.
_TALLY_KEY = pytest.StashKey[dict[str, dict[str, dict[str, int]]]]()
_OWNERS_KEY = pytest.StashKey[dict[str, "ConformanceTarget"]]()  # owner -> its target, once it ran
_FEATURES_KEY = pytest.StashKey[dict[str, tuple[str, list[str]]]]()
_FAILED_KEY = pytest.StashKey[dict[str, set[str]]]()
_OPTIONS = ""  # the owner of the tests the command-line options drive
STATE_MACHINE = "test_sandbox_behaves_like_its_model"
CLIENTS = ("sync", "async")  # grainchain.sync.Sandbox, grainchain.Sandbox (conformance/clients.py)
# below pytest-timeout's 120 s in grainchain's own test runs, so that this message is the one shown
DEFAULT_HANG_TIMEOUT = 90.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grainchain", "grainchain conformance suite")
    group.addoption(
        "--grainchain-provider",
        default=os.environ.get("GRAINCHAIN_CONFORMANCE_PROVIDER", "local"),
        help="provider to check (default: $GRAINCHAIN_CONFORMANCE_PROVIDER or local)",
    )
    group.addoption(
        "--grainchain-config",
        default=os.environ.get("GRAINCHAIN_CONFORMANCE_CONFIG", "{}"),
        help='SandboxConfig of the suite\'s sandboxes, as JSON (e.g. \'{"image": "alpine"}\')',
    )
    group.addoption(
        "--grainchain-report",
        default=None,
        metavar="PATH",
        help="also write the per-feature results as JSON to PATH (used by `grainchain conformance`)",
    )
    group.addoption(
        "--grainchain-no-table",
        action="store_true",
        default=False,
        help="do not print the per-feature table (`grainchain conformance` prints its own)",
    )
    group.addoption(
        "--grainchain-client",
        choices=("both", *CLIENTS),
        default=os.environ.get("GRAINCHAIN_CONFORMANCE_CLIENT", "both"),
        help="the client(s) every test drives the provider with (default: both, each test runs twice)",
    )
    group.addoption(
        "--grainchain-hang-timeout",
        type=float,
        default=DEFAULT_HANG_TIMEOUT,
        metavar="SECONDS",
        help=f"fail a test that runs longer, naming the operation it hangs in (default {DEFAULT_HANG_TIMEOUT:g}; "
        "the state machine gets more, by its budget)",
    )
    group.addoption(
        "--grainchain-thorough",
        action="store_true",
        default=False,
        help="release-check budget: many more Hypothesis examples and longer runs",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "feature(*names): features a conformance test needs (else not applicable)"
    )
    config.addinivalue_line("markers", "covers(*names): features a conformance test checks where supported")
    config.addinivalue_line(
        "markers", "promises(*ids): spec promises a conformance test checks (promises.py)"
    )
    tally: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    config.stash[_TALLY_KEY] = tally
    config.stash[_OWNERS_KEY] = {}
    config.stash[_FEATURES_KEY] = {}
    failed: dict[str, set[str]] = defaultdict(set)
    config.stash[_FAILED_KEY] = failed
    config.stash[_CLASS_TARGETS_KEY] = {}


def suite_class(node: Any) -> type | None:
    """The subclass of the suite's classes (grainchain_conformance.suite) that a test item, metafunc or
    fixture request belongs to, if any."""
    cls = getattr(node, "cls", None)
    return cls if cls is not None and getattr(cls, "grainchain_conformance_suite", False) else None


def _in_suite(item: pytest.Item) -> bool:
    return str(item.path).startswith(SUITE_DIR) or suite_class(item) is not None


def _owner(item: pytest.Item) -> str:
    cls = suite_class(item)
    return _OPTIONS if cls is None else cls.__qualname__


def _new_target(provider: str, data: Any, thorough: bool) -> ConformanceTarget:
    """A target (creating it checks the provider is usable); GrainchainError as one line: _CannotStart."""
    from grainchain.errors import GrainchainError
    from grainchain.registry import get_provider
    from grainchain.settings import validate_config
    from grainchain_conformance.target import ConformanceTarget

    try:
        return ConformanceTarget(
            provider=get_provider(provider), config=validate_config(data), thorough=thorough
        )
    except GrainchainError as exc:  # unknown or unusable provider, bad config: one line, no INTERNALERROR
        message = " ".join(str(exc).split())
        raise _CannotStart(f"grainchain conformance cannot start: {message}") from None


class _CannotStart(Exception):
    pass


def target_for(config: pytest.Config) -> ConformanceTarget:
    """The provider under test, built once per session (creating it checks the provider is usable)."""
    if _TARGET_KEY not in config.stash:
        raw = config.getoption("--grainchain-config")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise pytest.UsageError(f"--grainchain-config is not valid JSON: {exc}") from None
        try:
            config.stash[_TARGET_KEY] = _new_target(
                config.getoption("--grainchain-provider"), data, config.getoption("--grainchain-thorough")
            )
        except _CannotStart as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_TARGET_KEY]


def class_target(config: pytest.Config, cls: type) -> ConformanceTarget | str:
    """The target of a suite class, built once per provider, config and budget; or why it cannot start."""
    provider = getattr(cls, "provider", None)
    if not isinstance(provider, str) or not provider:
        return f'{cls.__qualname__} inherits the grainchain conformance suite: set `provider = "NAME"`'
    raw = getattr(cls, "config", None) or {}
    data = raw.model_dump(exclude_unset=True) if hasattr(raw, "model_dump") else dict(raw)
    thorough = getattr(cls, "thorough", None)
    thorough = bool(config.getoption("--grainchain-thorough") if thorough is None else thorough)
    key = (provider, json.dumps(data, sort_keys=True, default=str), thorough)
    targets = config.stash[_CLASS_TARGETS_KEY]
    if key not in targets:
        try:
            targets[key] = _new_target(provider, data, thorough)
        except _CannotStart as exc:
            targets[key] = str(exc)
    return targets[key]


def _target_of(node: Any) -> ConformanceTarget:
    """The target of a suite test: its class's, else the options'. A class's that cannot start fails it."""
    cls = suite_class(node)
    if cls is None:
        return target_for(node.config)
    found = class_target(node.config, cls)
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    return found


def _clients(config: pytest.Config, cls: type | None) -> list[str]:
    """The clients the tests run with: the suite class's `clients`, else --grainchain-client."""
    chosen = getattr(cls, "clients", None) if cls is not None else None
    if chosen is None:
        chosen = config.getoption("--grainchain-client")
    if chosen not in ("both", *CLIENTS):
        raise ValueError(
            f"{getattr(cls, '__qualname__', '')}.clients must be 'both', 'sync' or 'async', got {chosen!r}"
        )
    return list(CLIENTS) if chosen == "both" else [chosen]


def features_of(item: pytest.Item) -> list[str]:
    return [str(name) for mark in item.iter_markers("feature") for name in mark.args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = [item for item in items if _in_suite(item)]
    if not suite:
        return
    from grainchain import Feature

    for item in suite:
        cls = suite_class(item)
        found = target_for(config) if cls is None else class_target(config, cls)
        if isinstance(found, str):
            continue  # the class's provider cannot start: its tests fail at setup, saying why
        target = found
        name = getattr(item, "originalname", item.name)
        if config.pluginmanager.hasplugin("timeout"):
            # pytest-timeout, when installed, only after our own hang guard (which names the operation)
            item.add_marker(pytest.mark.timeout(_hang_limit(item, target) + 60))
        if name in target.provider.conformance_exclusions:
            reason = target.provider.conformance_exclusions[name]
            item.add_marker(pytest.mark.skip(reason=f"excluded by provider {target.name!r}: {reason}"))
            continue
        # judged by what the provider offers here: its declaration narrowed by what its backend lacks
        lacking = [f for f in features_of(item) if not target.supports(Feature(f))]
        if lacking:
            declared = [f for f in lacking if not target.provider.supports(Feature(f))]
            narrowed = [f for f in lacking if f not in declared]
            why = [f"declares {', '.join(declared)} unsupported"] if declared else []
            why += [f"lacks {', '.join(narrowed)} here (narrowed at run time)"] if narrowed else []
            item.add_marker(
                pytest.mark.skip(
                    reason=f"not applicable: {target.name!r} {' and '.join(why)} "
                    "(test_unsupported checks its CapabilityError)"
                )
            )


def pytest_itemcollected(item: pytest.Item) -> None:
    """`-k test_exec` selects the tests of test_exec.py in a suite class too (its node ids lack the module)."""
    if suite_class(item) is not None and isinstance(item, pytest.Function):
        item.extra_keyword_matches.add(item.function.__module__.rpartition(".")[2])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    cls = suite_class(metafunc)
    in_suite = cls is not None or str(metafunc.definition.path).startswith(SUITE_DIR)
    if "conformance" in metafunc.fixturenames and in_suite:
        metafunc.parametrize("grainchain_client", _clients(metafunc.config, cls))


@pytest.fixture
def conformance(request: pytest.FixtureRequest, grainchain_client: str) -> ConformanceTarget:
    """The provider under test, driven by one client (see grainchain_conformance.target)."""
    clients = len(_clients(request.config, suite_class(request)))
    return replace(_target_of(request), client=grainchain_client, clients=clients)


def _hang_limit(item: pytest.Item, target: ConformanceTarget | str) -> float:
    if getattr(item, "originalname", item.name) == STATE_MACHINE and not isinstance(target, str):
        return max(target.budget.hang_guard, float(item.config.getoption("--grainchain-hang-timeout")))
    return float(item.config.getoption("--grainchain-hang-timeout"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The hang guard: a timer thread interrupts the test's thread with SIGUSR2, whose handler raises
    ConformanceHang naming the grainchain operations in flight (blocking calls are interrupted by it)."""
    if not _in_suite(item) or threading.current_thread() is not threading.main_thread():
        yield
        return
    from grainchain_conformance.clients import IN_FLIGHT, ConformanceHang

    cls = suite_class(item)
    limit = _hang_limit(item, target_for(item.config) if cls is None else class_target(item.config, cls))
    state = {"armed": True, "message": ""}

    def fire() -> None:
        state["message"] = (
            f"hung: {item.name} ran for more than {limit:g} s (--grainchain-hang-timeout); "
            f"in flight: {IN_FLIGHT.describe()}"
        )
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)

    def interrupt(signum: int, frame: object) -> None:
        if state["armed"]:
            state["armed"] = False
            raise ConformanceHang(state["message"])

    previous = signal.signal(signal.SIGUSR2, interrupt)
    timer = threading.Timer(limit, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        state["armed"] = False
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)


def pytest_report_header(config: pytest.Config) -> str | None:
    if _TARGET_KEY not in config.stash:
        return None
    target = config.stash[_TARGET_KEY]
    budget = "thorough" if target.thorough else "ci"
    return f"grainchain conformance: provider {target.name!r}, budget {budget}"


def pytest_collection_finish(session: pytest.Session) -> None:
    features = session.config.stash[_FEATURES_KEY]
    for item in session.items:
        if _in_suite(item):
            marked = features_of(item) + [str(f) for mark in item.iter_markers("covers") for f in mark.args]
            features[item.nodeid] = (_owner(item), list(dict.fromkeys(marked)) or ["(general)"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    counted = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    if counted and report.nodeid in item.config.stash[_FEATURES_KEY]:
        owner, features = item.config.stash[_FEATURES_KEY][report.nodeid]
        for feature in features:
            item.config.stash[_TALLY_KEY][owner][feature][report.outcome] += 1
        if report.failed:
            item.config.stash[_FAILED_KEY][owner].add(report.nodeid)
        owners = item.config.stash[_OWNERS_KEY]  # the owners whose tests ran, for their tables
        if owner not in owners:
            cls = suite_class(item)
            found = (
                item.config.stash.get(_TARGET_KEY, None) if cls is None else class_target(item.config, cls)
            )
            if found is not None and not isinstance(found, str):
                owners[owner] = found


def _report(config: pytest.Config, owner: str = _OPTIONS) -> dict[str, Any]:
    target = config.stash[_OWNERS_KEY][owner]
    from grainchain_conformance.promises import coverage_by_feature

    levels = {f.value: level.value for f, level in target.capabilities.items()}
    declared = {f.value: target.provider.level(f).value for f in target.capabilities}
    failed: set[str] = config.stash[_FAILED_KEY][owner]
    coverage = coverage_by_feature()
    tally: dict[str, dict[str, int]] = config.stash[_TALLY_KEY][owner]
    return {
        "provider": target.name,
        "budget": "thorough" if target.thorough else "ci",
        "capabilities": levels,  # every feature's level here (declared, narrowed), tested or not
        "declared": declared,
        "missing_here": {f.value: reason for f, reason in target.missing.items()},
        "features": {
            feature: {
                "declared": declared.get(feature, "-"),
                "here": levels.get(feature, "-"),
                "promises_checked": coverage.get(feature, (0, 0))[0],
                "promises": coverage.get(feature, (0, 0))[1],
                **dict(counts),
            }
            for feature in sorted(set(tally) | set(coverage))
            for counts in [tally.get(feature, {})]
        },
        "failed": sorted(failed),
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    owners = config.stash[_OWNERS_KEY]
    if _OPTIONS in owners and (path := config.getoption("--grainchain-report")):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_report(config), f, indent=2)
    if config.getoption("--grainchain-no-table"):
        return
    for owner, target in owners.items():
        _table(terminalreporter, target, owner, config.stash[_TALLY_KEY][owner])


def _table(
    terminalreporter: Any, target: ConformanceTarget, owner: str, tally: dict[str, dict[str, int]]
) -> None:
    from grainchain_conformance.promises import coverage_by_feature

    coverage = coverage_by_feature()
    write = terminalreporter.write_line
    terminalreporter.section(f"grainchain conformance: {target.name}" + (f" ({owner})" if owner else ""))
    write(
        f"{'feature':25} {'declared':11} {'here':11} {'promises':>8} {'passed':>6} {'failed':>6} "
        f"{'skipped':>7}"
    )
    for feature in sorted(tally):
        known = next((f for f in target.capabilities if f.value == feature), None)
        declared = "-" if known is None else target.provider.level(known).value
        here = "-" if known is None else target.capabilities[known].value
        counts = tally[feature]
        done, total = coverage.get(feature, (0, 0))
        checked = f"{done}/{total}" if total else "-"
        write(
            f"{feature:25} {declared:11} {here:11} {checked:>8} {counts['passed']:>6} {counts['failed']:>6} "
            f"{counts['skipped']:>7}"
        )
    for feature, reason in target.missing.items():
        write(f"unsupported here: {feature.value} ({reason})")
