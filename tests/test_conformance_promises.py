"""The promise list and the coverage check of the conformance suite (conformance/grainchain_conformance/promises.py):
the spec's promises are found, and a suite that leaves one unclaimed, or claims one the spec does not make,
is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from grainchain_conformance import promises


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty suite directory that promises.py reads instead of the real one."""
    monkeypatch.setattr(promises, "SUITE_DIR", tmp_path)
    promises.claims.cache_clear()
    yield tmp_path
    promises.claims.cache_clear()


def test_every_kind_of_promise_comes_from_the_spec() -> None:
    found = promises.spec_promises()
    for expected in (
        "convention:paths",
        "feature:snapshot.filesystem",
        "op:execute",
        "param:execute.working_dir",
        "raises:download_file.FileNotFoundInSandboxError",
        "config:output_limit",
        "field:FileInfo.mode",
        "lifecycle:close",
    ):
        assert expected in found, expected
    assert found["config:cpu_limit"].features == ("limits.cpu",)
    assert found["op:create_snapshot"].features == ("snapshot.filesystem", "snapshot.memory")
    assert "param:execute.command" not in found  # undocumented parameters promise nothing beyond their type


def test_the_real_suite_covers_every_promise() -> None:
    assert promises.uncovered() == []
    assert promises.unknown_claims() == {}


def test_an_unclaimed_promise_is_reported(suite: Path) -> None:
    (suite / "test_some.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.promises("op:execute")\n'
        "def test_one(): ...\n\n"
        "class Machine:\n"
        '    @checks("op:download_file")\n'
        "    def rule(self): ...\n"
    )
    missing = promises.uncovered()
    assert "op:execute" not in missing
    assert "op:download_file" not in missing  # state machine rules claim with @checks
    assert "raises:download_file.FileNotFoundInSandboxError" in missing
    assert len(missing) == len(promises.spec_promises()) - len(promises.NOT_TESTABLE) - 2
    assert promises.coverage_by_feature()["exec"][0] < promises.coverage_by_feature()["exec"][1]


def test_a_claim_of_no_promise_is_reported(suite: Path) -> None:
    (suite / "test_typo.py").write_text(
        'import pytest\n\n@pytest.mark.promises("raises:execute.CommandTimeoutErorr")\ndef test_x(): ...\n'
    )
    assert promises.unknown_claims() == {"raises:execute.CommandTimeoutErorr": ("test_typo::test_x",)}
