"""The conformance suite as inheritable classes (grainchain_conformance.suite): a provider author's test file
with `class TestX(ConformanceSuite): provider = "x"` runs the suite's tests against that provider, judged as
the plugin judges `--grainchain-provider x` runs: per client, by the declaration narrowed at run time.

The runs are pytest subprocesses in a directory of their own, against the in-memory test provider
(tests/providers/memory): its sandboxes cost nothing, but its commands are no shell, so each run selects the
suite's tests that need none (`-k` by module name works on classes too)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from grainchain_conformance import ConformanceSuite, suite
from tests.providers.memory import ROOT

HEADER = """
    from grainchain import registry
    from grainchain.errors import FileNotFoundInSandboxError
    from grainchain_conformance import ConformanceSuite, DeclarationSuite
    from tests.providers.memory import declaration
    from tests.providers.memory._async.adapter import AsyncMemoryAdapter
    from tests.providers.memory._sync.adapter import MemoryAdapter

    registry.register(declaration(), replace=True)
"""

LIAR = """
    class AsyncLiarAdapter(AsyncMemoryAdapter):
        provider_name = "memory-liar"

        async def download_file(self, path):  # a missing file reads as empty instead of raising
            try:
                return await super().download_file(path)
            except FileNotFoundInSandboxError:
                return b""


    class LiarAdapter(MemoryAdapter):
        provider_name = "memory-liar"

        def download_file(self, path):
            try:
                return super().download_file(path)
            except FileNotFoundInSandboxError:
                return b""


    registry.register(
        declaration(
            name="memory-liar",
            async_adapter=f"{__name__}:AsyncLiarAdapter",
            sync_adapter=f"{__name__}:LiarAdapter",
        ),
        replace=True,
    )


    class TestMemory(ConformanceSuite):
        provider = "memory"


    class TestLiar(ConformanceSuite):
        provider = "memory-liar"


    class TestNobody(DeclarationSuite):
        provider = "no-such-provider"
"""

# the suite's tests that need no shell, selected by module (and by name)
NO_SHELL = (
    "test_declaration or test_unsupported or test_attributes_and_a_closed_sandbox"
    " or test_a_missing_path_raises_file_not_found or test_snapshots_are_listed_until_deleted"
)


def _run(
    tmp_path: Path, source: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, tuple[str, str]]]:
    """pytest on a test file of `source`; the outcome and message of each test by "Class::test[params]"."""
    (tmp_path / "test_inherited.py").write_text(textwrap.dedent(HEADER) + textwrap.dedent(source))
    report = tmp_path / "report.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "junit_family=xunit1"),
            f"--junitxml={report}",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        # a suite class, or the suite module of a test the options drive (no class name: outside rootdir)
        owner = case.get("classname", "").rpartition(".")[2] or Path(case.get("file", "")).stem
        found = [
            (child.tag, child.get("message", ""))
            for child in case
            if child.tag in ("failure", "error", "skipped")
        ]
        outcomes[f"{owner}::{case.get('name')}"] = found[0] if found else ("passed", "")
    return proc, outcomes


def test_an_inherited_suite_runs_against_its_provider_and_catches_a_liar(tmp_path: Path) -> None:
    proc, outcomes = _run(tmp_path, LIAR, "test_inherited.py", "-k", NO_SHELL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    memory = {test: outcome for test, outcome in outcomes.items() if test.startswith("TestMemory::")}
    # every test of the selected modules, once per client
    for test in suite.suite_tests(suite.test_declaration):
        for client in ("sync", "async"):
            assert memory[f"TestMemory::{test}[{client}]"] == ("passed", ""), output
    assert memory["TestMemory::test_a_missing_path_raises_file_not_found[async]"][0] == "passed"
    assert memory["TestMemory::test_unsupported_operation_raises_capability_error[sync-ports]"][0] == "passed"
    skipped = memory["TestMemory::test_unsupported_operation_raises_capability_error[sync-files]"]
    assert skipped == ("skipped", "not applicable: 'memory' supports files (behaviour tests check it)")
    assert {outcome for outcome, _ in memory.values()} == {"passed", "skipped"}, memory
    assert sum(outcome == "passed" for outcome, _ in memory.values()) >= 30

    # the liar differs from memory in one lie only: the test meant to catch it fails, on both clients
    liar = {
        test.replace("TestLiar::", "TestMemory::"): o
        for test, o in outcomes.items()
        if test.startswith("TestLiar::")
    }
    caught = {test for test in liar if liar[test][0] != memory[test][0]}
    assert caught == {
        "TestMemory::test_a_missing_path_raises_file_not_found[sync]",
        "TestMemory::test_a_missing_path_raises_file_not_found[async]",
    }, output
    assert {liar[test][0] for test in caught} == {"failure"}

    # a provider that cannot start fails its class's tests, saying why; the other classes ran
    nobody = [o for test, o in outcomes.items() if test.startswith("TestNobody::")]
    assert len(nobody) == 6
    assert all(
        kind == "error" and "unknown provider 'no-such-provider'" in message for kind, message in nobody
    )
    # one table per class
    assert "grainchain conformance: memory (TestMemory)" in proc.stdout
    assert "grainchain conformance: memory-liar (TestLiar)" in proc.stdout


NARROWED = """
    MISSING = {"snapshot.filesystem": "the fake store is read-only"}


    class TestNarrowed(ConformanceSuite):
        provider = "memory"
        config = {"provider_config": {"missing": MISSING}}
        clients = "async"
"""


def test_the_suite_judges_a_provider_by_its_narrowed_capabilities(tmp_path: Path) -> None:
    """memory declares snapshot.filesystem native; a backend that lacks it at run time must have it checked
    as unsupported (CapabilityError) and its behaviour tests skipped, through the options and through a class."""
    narrowing = '{"provider_config": {"missing": {"snapshot.filesystem": "the fake store is read-only"}}}'
    proc, outcomes = _run(
        tmp_path,
        NARROWED,
        *("test_inherited.py", "--pyargs", "grainchain_conformance.test_unsupported"),
        *("grainchain_conformance.test_snapshots", "grainchain_conformance.test_declaration"),
        *("--grainchain-provider", "memory", "--grainchain-config", narrowing, "--grainchain-client", "sync"),
        *("-k", "test_unsupported or test_snapshots or test_declaration"),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for owner, client in (("test_unsupported", "sync"), ("TestNarrowed", "async")):
        unsupported = outcomes[
            f"{owner}::test_unsupported_operation_raises_capability_error[{client}-snapshot.filesystem]"
        ]
        assert unsupported == ("passed", ""), output
    for owner, client in (("test_snapshots", "sync"), ("TestNarrowed", "async")):
        for test in ("test_restore_brings_back_exactly_the_tree", "test_snapshots_are_listed_until_deleted"):
            assert outcomes[f"{owner}::{test}[{client}]"] == (
                "skipped",
                "not applicable: 'memory' lacks snapshot.filesystem here (narrowed at run time) "
                "(test_unsupported checks its CapabilityError)",
            ), output
    assert outcomes["test_declaration::test_runtime_narrowing_never_widens[sync]"] == ("passed", "")
    assert outcomes["TestNarrowed::test_runtime_narrowing_never_widens[async]"] == ("passed", "")
    tables = proc.stdout.split("grainchain conformance: memory")[1:]
    assert len(tables) == 2, proc.stdout  # the options' run and the class's
    for table in tables:
        assert [
            line.split()[:3] for line in table.splitlines() if line.startswith("snapshot.filesystem")
        ] == [["snapshot.filesystem", "native", "unsupported"]], "declared, then here"
        assert "unsupported here: snapshot.filesystem (" in table


def test_the_whole_suite_is_inherited() -> None:
    """Every test function of every suite module is a test of ConformanceSuite (test_coverage checks the
    suite itself, not a provider): a module or test added to the suite cannot be left out of the classes."""
    modules = {p.stem for p in Path(suite.__file__).parent.glob("test_*.py")} - {"test_coverage"}
    parts = {getattr(suite, f"{''.join(w.title() for w in m.split('_')[1:])}Suite") for m in modules}
    assert set(ConformanceSuite.__bases__) == parts
    for module in modules:
        tests = suite.suite_tests(getattr(suite, module))
        assert tests, module
        for name, function in tests.items():
            assert getattr(ConformanceSuite, name) is function, f"{module}.{name}"
