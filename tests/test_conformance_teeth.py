"""The conformance suite has teeth: providers whose adapters lie are each caught by the tests meant to catch
that lie, and an honest copy built the same way passes (so what fails is the lie, not the harness).

Each provider is the local one (both adapters subclassed, local's declaration copied), installed as a plugin
the way `pip install` leaves one: a module and a .dist-info with an entry point under `grainchain.providers`.
The real suite runs against it in a subprocess, as a provider author runs it, several runs at a time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import sandbox_processes

# Eleven runs of the whole suite, most of them failing: Hypothesis shrinks each failure of the state machine
# (hundreds of replays), so the file takes about a minute of both cores even with four runs at a time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STATE_MACHINE = "test_sandbox_behaves_like_its_model"


@dataclass(frozen=True)
class Liar:
    name: str
    lie: str
    methods: str  # overriding methods as written for the async adapter; the sync ones drop async/await
    caught_by: frozenset[str] = frozenset()  # suite tests that must fail (names without parameters)
    may_also_fail: frozenset[str] = frozenset()  # tests that catch the lie only when Hypothesis hits it


LIARS = [
    Liar("honest", "none (local's adapters, unchanged)", ""),
    Liar(
        "restore_noop",
        "restore_snapshot returns without restoring (an unknown id still raises SnapshotNotFoundError)",
        """
        async def restore_snapshot(self, snapshot_id):
            fs.snapshot_tree(self._state_dir, snapshot_id)
        """,
        caught_by=frozenset({"test_each_snapshot_restores_its_own_state_into_any_sandbox"}),
        may_also_fail=frozenset({STATE_MACHINE}),
    ),
    Liar(
        "drop_stderr",
        "execute returns its results with stderr=''",
        """
        async def execute(self, **kwargs):
            result = await super().execute(**kwargs)
            return result.model_copy(update={"stderr": ""})
        """,
        caught_by=frozenset(
            {
                STATE_MACHINE,
                "test_large_output_arrives_whole",
                "test_streaming_delivers_output_before_the_command_ends",
            }
        ),
    ),
    Liar(
        "ignore_working_dir",
        "commands ignore working_dir and run in the sandbox's default directory",
        """
        async def execute(self, **kwargs):
            return await super().execute(**{**kwargs, "working_dir": None})

        async def start_process(self, **kwargs):
            return await super().start_process(**{**kwargs, "working_dir": None})
        """,
        caught_by=frozenset({"test_commands_start_where_they_are_told"}),
        may_also_fail=frozenset({STATE_MACHINE}),
    ),
    Liar(
        "no_stderr_stream",
        "on_stderr is never called (stderr still arrives in the result)",
        """
        async def execute(self, **kwargs):
            return await super().execute(**{**kwargs, "on_stderr": None})

        async def start_process(self, **kwargs):
            return await super().start_process(**{**kwargs, "on_stderr": None})
        """,
        caught_by=frozenset({"test_streaming_delivers_output_before_the_command_ends"}),
        may_also_fail=frozenset({STATE_MACHINE}),
    ),
    Liar(
        "ignore_config_working_dir",
        "SandboxConfig.working_directory is ignored: everything starts in the workspace",
        """
        def _working_directory(self, working_dir):
            return self._box.workspace
        """,
        caught_by=frozenset({"test_commands_start_where_they_are_told"}),
    ),
    Liar(
        "forget_config_env",
        "SandboxConfig.environment_vars never reach a command",
        """
        def __init__(self, box, config, *args, **kwargs):
            super().__init__(box, config.model_copy(update={"environment_vars": {}}), *args, **kwargs)
        """,
        caught_by=frozenset({"test_config_environment_reaches_every_command"}),
    ),
    Liar(
        "timeout_success",
        "a command that times out returns exit code 0 with its partial output instead of raising",
        """
        async def execute(self, **kwargs):
            try:
                return await super().execute(**kwargs)
            except CommandTimeoutError as exc:
                return ExecutionResult(
                    command=exc.command,
                    return_code=0,
                    stdout=exc.stdout,
                    stderr=exc.stderr,
                    execution_time=exc.timeout,
                )
        """,
        caught_by=frozenset(
            {
                "test_timeout_kills_the_whole_tree_and_keeps_partial_output",
                "test_default_timeout_comes_from_the_config",
            }
        ),
    ),
    Liar(
        "list_sizes",
        "list_files reports no file as bigger than 1 KiB (the size of a preview, not of the file)",
        """
        async def list_files(self, path="."):
            return [i.model_copy(update={"size": min(i.size, 1024)}) for i in await super().list_files(path)]
        """,
        caught_by=frozenset(
            {"test_listing_shows_every_entry_with_its_size", "test_large_file_round_trip_is_byte_identical"}
        ),
        may_also_fail=frozenset({STATE_MACHINE}),
    ),
    Liar(
        "list_misses",
        "list_files leaves out entries whose name is not ASCII",
        """
        async def list_files(self, path="."):
            return [i for i in await super().list_files(path) if i.name.isascii()]
        """,
        caught_by=frozenset({"test_listing_shows_every_entry_with_its_size"}),
        may_also_fail=frozenset({STATE_MACHINE}),
    ),
    Liar(
        "constant_snapshot_id",
        "create_snapshot always returns the same id (one slot: each snapshot replaces the one before)",
        """
        async def create_snapshot(self, kind=SnapshotKind.filesystem):
            fresh = await super().create_snapshot(kind)
            with contextlib.suppress(SnapshotNotFoundError):
                await super().delete_snapshot(SLOT)
            snapshots = fs._snapshots(self._state_dir)
            (snapshots / fresh).rename(snapshots / SLOT)
            return SLOT
        """,
        caught_by=frozenset({STATE_MACHINE, "test_each_snapshot_restores_its_own_state_into_any_sandbox"}),
    ),
]

MODULE = '''\
"""The local provider under another name, with one lie: {lie}."""

import contextlib

from grainchain import ProviderInfo
from grainchain import _localfs as fs
from grainchain._async.providers.local import AsyncLocalAdapter
from grainchain._generated.providers import BUILTIN_PROVIDERS
from grainchain._sync.providers.local import LocalAdapter
from grainchain.errors import CommandTimeoutError, SnapshotNotFoundError
from grainchain.models import ExecutionResult, SnapshotKind

SLOT = "snap-" + "0" * 32


class AsyncLiar(AsyncLocalAdapter):
    provider_name = {name!r}
{async_methods}


class SyncLiar(LocalAdapter):
    provider_name = {name!r}
{sync_methods}


PROVIDER = ProviderInfo(
    name={name!r},
    summary="conformance-teeth test double",
    features=BUILTIN_PROVIDERS["local"].features,
    async_adapter="{module}:AsyncLiar",
    sync_adapter="{module}:SyncLiar",
)
'''


def install(root: Path, liar: Liar) -> None:
    """The liar as an installed plugin in `root` (a directory to put on sys.path)."""
    module = f"grainchain_liar_{liar.name}"
    methods = textwrap.indent(textwrap.dedent(liar.methods).strip() or "pass", "    ")
    (root / f"{module}.py").write_text(
        MODULE.format(
            lie=liar.lie,
            name=liar.name,
            module=module,
            async_methods=methods,
            sync_methods=re.sub(r"\b(async|await) ", "", methods),
        )
    )
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[grainchain.providers]\n{liar.name} = {module}:PROVIDER\n")


@dataclass(frozen=True)
class Run:
    exit_code: int
    failed: frozenset[str]
    seconds: float
    output: str

    def describe(self, liar: Liar) -> str:
        return (
            f"{liar.name} (lie: {liar.lie}): exit {self.exit_code} after {self.seconds:.1f} s, "
            f"failed {sorted(self.failed)}\n{self.output[-4000:]}"
        )


# Variables of the calling environment that would change what the suite checks.
_DROPPED_ENV = (
    "GRAINCHAIN_CONFORMANCE_PROVIDER",
    "GRAINCHAIN_CONFORMANCE_CONFIG",
    "GRAINCHAIN_DEFAULT_PROVIDER",
    "PYTEST_ADDOPTS",
)


def run_suite(root: Path, liar: Liar) -> Run:
    """`pytest --pyargs grainchain.conformance` against the liar, with its own state dir and no config."""
    work = root / liar.name
    site = work / "site"
    site.mkdir(parents=True)
    install(site, liar)
    report = work / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        GRAINCHAIN_STATE_DIR=str(root / "state" / liar.name),
        GRAINCHAIN_CONFIG=str(work / "no-config.toml"),
    )
    command = [
        *(sys.executable, "-m", "pytest", "--pyargs", "grainchain.conformance"),
        *("--grainchain-provider", liar.name, "-p", "no:cacheprovider", "-q"),
        # the lies are in commands, files and snapshots: unisolated sandboxes (no namespace holder to start
        # again after each restore, no CRIU) keep the shrinking of hundreds of replays within the timeout
        *("--grainchain-config", '{"provider_config": {"isolation": "none"}}'),
        *("--grainchain-report", str(report)),
    ]
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    seconds = time.monotonic() - started
    failed = json.loads(report.read_text())["failed"] if report.exists() else []
    names = frozenset(node.rpartition("::")[2].partition("[")[0] for node in failed)
    return Run(proc.returncode, names, seconds, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The suite's verdict on every liar, four runs at a time (each also sleeps a few seconds in commands)."""
    root = tmp_path_factory.mktemp("teeth")
    # the ones the state machine catches first: Hypothesis shrinking their failures takes longest
    order = sorted(LIARS, key=lambda liar: STATE_MACHINE not in liar.caught_by | liar.may_also_fail)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda liar: run_suite(root, liar), order)
        verdicts = {liar.name: run for liar, run in zip(order, results, strict=True)}
    print(f"\nconformance suite against each liar ({time.monotonic() - started:.1f} s in all):")
    for name, run in verdicts.items():
        print(f"  {name:26} exit {run.exit_code}  {run.seconds:5.1f} s  failed {sorted(run.failed)}")
    leftovers = sandbox_processes(root / "state")
    assert not leftovers, f"sandbox processes left running by the suite: {leftovers}"
    return verdicts


def test_the_honest_copy_passes(runs: dict[str, Run]) -> None:
    """Built and run exactly like the liars: what fails below is a lie, not the harness."""
    honest = next(liar for liar in LIARS if liar.name == "honest")
    run = runs["honest"]
    assert (run.exit_code, run.failed) == (0, frozenset()), run.describe(honest)


@pytest.mark.parametrize("liar", [li for li in LIARS if li.caught_by], ids=lambda li: li.name)
def test_each_lie_is_caught_by_the_tests_meant_to_catch_it(runs: dict[str, Run], liar: Liar) -> None:
    run = runs[liar.name]
    assert run.exit_code == 1, run.describe(liar)
    assert liar.caught_by <= run.failed, run.describe(liar)
    assert run.failed <= liar.caught_by | liar.may_also_fail, run.describe(liar)
