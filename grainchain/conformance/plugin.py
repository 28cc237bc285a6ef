"""pytest plugin of the conformance suite (registered under pytest11, so it loads wherever grainchain is
installed; it stays inert unless conformance tests are collected).

Options: --grainchain-provider NAME (default: $GRAINCHAIN_CONFORMANCE_PROVIDER, else local),
--grainchain-config JSON (SandboxConfig of the sandboxes the suite creates), --grainchain-thorough,
--grainchain-report PATH (the per-feature results as JSON), --grainchain-no-table. A provider that cannot be
used (unknown, no adapter, sandbox creation fails) or a bad config stops the run as a pytest usage error.

Each conformance test is marked with the features it checks. A test whose feature the provider declares
unsupported is skipped with that reason (test_unsupported checks the CapabilityError instead); a test the
provider excludes (ProviderInfo.conformance_exclusions) is skipped with the provider's reason. The summary at
the end lists, per feature, what was checked.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from grainchain.conformance.target import ConformanceTarget

SUITE_DIR = os.path.dirname(os.path.abspath(__file__))
_TARGET_KEY = pytest.StashKey["ConformanceTarget"]()
# per feature: outcome -> count; and the features of each collected conformance test
_TALLY_KEY = pytest.StashKey[dict[str, dict[str, int]]]()
_FEATURES_KEY = pytest.StashKey[dict[str, list[str]]]()
_FAILED_KEY = pytest.StashKey[set[str]]()


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
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    config.stash[_TALLY_KEY] = tally
    config.stash[_FEATURES_KEY] = {}
    config.stash[_FAILED_KEY] = set()


def _in_suite(item: pytest.Item) -> bool:
    return str(item.path).startswith(SUITE_DIR)


def target_for(config: pytest.Config) -> ConformanceTarget:
    """The provider under test, built once per session (creating it checks the provider is usable)."""
    if _TARGET_KEY not in config.stash:
        from grainchain.conformance.target import ConformanceTarget
        from grainchain.errors import GrainchainError
        from grainchain.registry import get_provider
        from grainchain.settings import validate_config

        raw = config.getoption("--grainchain-config")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise pytest.UsageError(f"--grainchain-config is not valid JSON: {exc}") from None
        try:
            config.stash[_TARGET_KEY] = ConformanceTarget(
                provider=get_provider(config.getoption("--grainchain-provider")),
                config=validate_config(data),
                thorough=config.getoption("--grainchain-thorough"),
            )
        except GrainchainError as exc:  # unknown or unusable provider, bad config: one line, no INTERNALERROR
            message = " ".join(str(exc).split())
            raise pytest.UsageError(f"grainchain conformance cannot start: {message}") from None
    return config.stash[_TARGET_KEY]


def features_of(item: pytest.Item) -> list[str]:
    return [str(name) for mark in item.iter_markers("feature") for name in mark.args]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = [item for item in items if _in_suite(item)]
    if not suite:
        return
    from grainchain._generated.features import Feature

    target = target_for(config)
    for item in suite:
        name = getattr(item, "originalname", item.name)
        if name == "test_sandbox_behaves_like_its_model" and config.pluginmanager.hasplugin("timeout"):
            # its run time grows with the budget and the provider's latency
            item.add_marker(pytest.mark.timeout(target.budget.hang_guard))
        if name in target.provider.conformance_exclusions:
            reason = target.provider.conformance_exclusions[name]
            item.add_marker(pytest.mark.skip(reason=f"excluded by provider {target.name!r}: {reason}"))
            continue
        lacking = [f for f in features_of(item) if not target.supports(Feature(f))]
        if lacking:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"not applicable: {target.name!r} declares {', '.join(lacking)} unsupported "
                    "(test_unsupported checks its CapabilityError)"
                )
            )


@pytest.fixture(scope="session")
def conformance(request: pytest.FixtureRequest) -> ConformanceTarget:
    """The provider under test (see grainchain.conformance.target.ConformanceTarget)."""
    return target_for(request.config)


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
            features[item.nodeid] = list(dict.fromkeys(marked)) or ["(general)"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    counted = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    if counted and report.nodeid in item.config.stash[_FEATURES_KEY]:
        for feature in item.config.stash[_FEATURES_KEY][report.nodeid]:
            item.config.stash[_TALLY_KEY][feature][report.outcome] += 1
        if report.failed:
            item.config.stash[_FAILED_KEY].add(report.nodeid)


def _report(config: pytest.Config) -> dict[str, Any]:
    target = config.stash[_TARGET_KEY]
    levels = {f.value: level.value for f, level in target.capabilities.items()}
    failed: set[str] = config.stash[_FAILED_KEY]
    return {
        "provider": target.name,
        "budget": "thorough" if target.thorough else "ci",
        "capabilities": levels,  # every feature's level, tested or not
        "features": {
            feature: {"declared": levels.get(feature, "-"), **dict(counts)}
            for feature, counts in sorted(config.stash[_TALLY_KEY].items())
        },
        "failed": sorted(failed),
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash[_TALLY_KEY]
    if _TARGET_KEY not in config.stash or not tally:
        return
    target = config.stash[_TARGET_KEY]
    if path := config.getoption("--grainchain-report"):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_report(config), f, indent=2)
    if config.getoption("--grainchain-no-table"):
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"grainchain conformance: {target.name}")
    write(f"{'feature':28} {'declared':12} {'passed':>6} {'failed':>6} {'skipped':>7}")
    for feature in sorted(tally):
        level = next((lvl.value for f, lvl in target.capabilities.items() if f.value == feature), "-")
        counts = tally[feature]
        write(f"{feature:28} {level:12} {counts['passed']:>6} {counts['failed']:>6} {counts['skipped']:>7}")
