"""The conformance suite has teeth: providers whose adapters lie are each caught, by one of the tests meant to
catch that lie, and honest copies built the same way pass (so what fails is the lie, not the harness).

Each provider is the local one (both adapters subclassed, local's declaration copied), installed as a plugin
the way `pip install` leaves one: a module and a .dist-info with an entry point under `grainchain.providers`.
The real suite runs against it in a subprocess, as a provider author runs it, several runs at a time, each
stopping at its first failure (`-x`), the modules meant to catch the lie first.

Two sets of liars: ours below, written beside the suite for the promises it checks, and the blind ones of
tests/blind_liars.py, written by someone who had read only the spec and docs/writing-a-provider.md (each
confirmed real by a probe: tests/blind_liars_probe.py). A liar the suite misses fails here until the suite
catches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _local import mounts_under
from blind_liars import BLIND_LIARS
from conftest import sandbox_processes

# ~70 runs of the suite, most of them failing early: a few minutes of both cores, eight runs at a time
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

STATE_MACHINE = "test_sandbox_behaves_like_its_model"
UNISOLATED = '{"provider_config": {"isolation": "none"}}'  # fast: no holder to restart, no CRIU
ISOLATED = "{}"  # the default: namespaces, where the sandbox's view differs from the host's
SUITE_MODULES = [
    "test_coverage",
    "test_declaration",
    "test_exec",
    "test_files",
    "test_paths",
    "test_processes",
    "test_lifecycle",
    "test_snapshots",
    "test_examples",
    "test_unsupported",
    "test_state_machine",
]


@dataclass(frozen=True)
class Liar:
    name: str
    lie: str
    methods: str  # overriding methods as written for the async adapter; the sync ones drop async/await
    caught_by: frozenset[str] = frozenset()  # suite tests (names without parameters) one of which must fail
    imports: str = ""
    config: str = UNISOLATED  # the suite's --grainchain-config for this liar
    only: str = ""  # "async" or "sync": the lie is in that adapter only (the other is honest)
    blind: bool = False  # written without reading the suite (tests/blind_liars.py)

    @property
    def clients(self) -> list[str]:
        """The clients the suite drives the liar with, one run each until one fails: the one that meets the
        lie (sync, the faster, when both adapters lie); for a blind liar, whose lie may be in either adapter,
        sync and then, if the sync run passed, async; both for the unisolated honest copy, the baseline of
        the blind liars (the isolated one is that of our path liars, run on sync)."""
        if self.only:
            return [self.only]
        both = self.blind or (not self.methods and self.config == UNISOLATED)
        return ["sync", "async"] if both else ["sync"]

    def modules(self) -> list[str]:
        """The suite's modules in the order that reaches the tests meant to catch the lie soonest."""
        first = {test.split("::")[0] for test in self.caught_by if "::" in test}
        return sorted(SUITE_MODULES, key=lambda m: m not in first)

    def tests(self) -> frozenset[str]:
        return frozenset(test.rpartition("::")[2] for test in self.caught_by)


def _by(*tests: str) -> frozenset[str]:
    return frozenset(tests)


HONEST = [
    Liar("honest", "none (local's adapters, unchanged; unisolated)", ""),
    Liar("honest_isolated", "none (local's adapters, unchanged; namespaces)", "", config=ISOLATED),
]

LIARS = [
    Liar(
        "restore_noop",
        "restore_snapshot returns without restoring (an unknown id still raises SnapshotNotFoundError)",
        """
        async def _restore_snapshot(self, snapshot_id):
            fs.snapshot_tree(self._state_dir, snapshot_id)
        """,
        caught_by=_by("test_snapshots::test_restore_brings_back_exactly_the_tree"),
    ),
    Liar(
        "drop_stderr",
        "execute returns its results with stderr=''",
        """
        async def execute(self, **kwargs):
            result = await super().execute(**kwargs)
            return result.model_copy(update={"stderr": ""})
        """,
        caught_by=_by("test_exec::test_result_fields_say_what_ran"),
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
        caught_by=_by("test_exec::test_working_dir_must_exist_and_goes_where_cd_goes"),
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
        caught_by=_by(
            "test_processes::test_background_output_streams_while_it_runs",
            "test_examples::test_streaming_delivers_output_before_the_command_ends",
        ),
    ),
    Liar(
        "ignore_config_working_dir",
        "SandboxConfig.working_directory is ignored: everything starts in the workspace",
        """
        def _working_directory(self, working_dir):
            return self._box.workspace
        """,
        caught_by=_by("test_examples::test_commands_start_where_they_are_told"),
    ),
    Liar(
        "forget_config_env",
        "SandboxConfig.environment_vars never reach a command",
        """
        def __init__(self, box, config, *args, **kwargs):
            super().__init__(box, config.model_copy(update={"environment_vars": {}}), *args, **kwargs)
        """,
        caught_by=_by("test_exec::test_the_call_environment_wins_over_the_config"),
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
        caught_by=_by("test_exec::test_a_call_timeout_replaces_the_config_default"),
    ),
    Liar(
        "list_sizes",
        "list_files reports no file as bigger than 1 KiB (the size of a preview, not of the file)",
        """
        async def list_files(self, path="."):
            return [i.model_copy(update={"size": min(i.size, 1024)}) for i in await super().list_files(path)]
        """,
        caught_by=_by(
            "test_files::test_file_info_matches_what_commands_see",
            "test_files::test_awkward_names_are_listed_and_reached",
            "test_files::test_sizes_around_every_buffer_boundary_round_trip",
        ),
    ),
    Liar(
        "list_misses",
        "list_files leaves out entries whose name is not ASCII",
        """
        async def list_files(self, path="."):
            return [i for i in await super().list_files(path) if i.name.isascii()]
        """,
        caught_by=_by("test_files::test_awkward_names_are_listed_and_reached"),
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
        caught_by=_by(
            "test_snapshots::test_snapshots_are_listed_until_deleted",
            "test_snapshots::test_restore_brings_back_exactly_the_tree",
        ),
    ),
    # -- the promises issue 10 found unchecked ------------------------------------------------------------
    Liar(
        "absolute_paths_on_the_host",
        "file operations take an absolute path outside the workspace as a path on the client's host",
        """
        async def download_file(self, path):
            if path.startswith("/") and not path.startswith(self._view_root):
                with open(path, "rb") as f:
                    return f.read()
            return await super().download_file(path)

        async def file_exists(self, path):
            if path.startswith("/") and not path.startswith(self._view_root):
                return os.path.exists(path)
            return await super().file_exists(path)
        """,
        imports="import os",
        config=ISOLATED,
        caught_by=_by("test_paths::test_paths_leading_out_reach_only_what_commands_see"),
    ),
    Liar(
        "upload_escapes_with_dot_dot",
        "upload_file joins the path onto the workspace without resolving `..`, so it writes on the host",
        """
        async def upload_file(self, path, content, mode="w"):
            if ".." in path.split("/"):
                target = os.path.normpath(os.path.join(str(self._box.workspace), path))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "ab" if "a" in mode else "wb") as f:
                    f.write(content.encode() if isinstance(content, str) else content)
                return
            await super().upload_file(path, content, mode)
        """,
        imports="import os",
        config=ISOLATED,
        caught_by=_by("test_paths::test_paths_leading_out_reach_only_what_commands_see"),
    ),
    Liar(
        "reconnect_declared_but_refused",
        "declares lifecycle.reconnect, but connect and list_sandboxes raise CapabilityError",
        """
        @classmethod
        async def connect(cls, backend, sandbox_id, config, options):
            raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "connect")

        @classmethod
        async def list_sandboxes(cls, backend):
            raise cls._unsupported(Feature.LIFECYCLE_RECONNECT, "list_sandboxes")
        """,
        imports="from grainchain._generated.features import Feature",
        caught_by=_by(
            "test_lifecycle::test_connect_reaches_the_same_running_sandbox",
            "test_lifecycle::test_close_ends_every_process_and_auto_cleanup_false_keeps_the_files",
        ),
    ),
    Liar(
        "terminate_keeps_running",
        "terminate() only marks the sandbox terminated: its processes run on",
        """
        async def terminate(self):
            self.status = SandboxStatus.terminated
        """,
        imports="from grainchain.models import SandboxStatus",
        caught_by=_by("test_processes::test_nothing_runs_while_terminated"),
    ),
    Liar(
        "close_spares_background",
        "close() kills the processes it started through handles, not `cmd &` started by execute",
        """
        async def _kill_all(self):
            for handle in self._handles:
                await handle.kill()
            self._handles.clear()
        """,
        caught_by=_by(  # (terminate kills through _kill_all too)
            "test_lifecycle::test_close_ends_every_process_and_auto_cleanup_false_keeps_the_files",
            "test_processes::test_nothing_runs_while_terminated",
        ),
    ),
    Liar(
        "close_always_deletes",
        "close() always deletes the sandbox, even with auto_cleanup=False",
        """
        async def aclose(self):
            self.config = self.config.model_copy(update={"auto_cleanup": True})
            await super().aclose()
        """,
        caught_by=_by("test_lifecycle::test_close_ends_every_process_and_auto_cleanup_false_keeps_the_files"),
    ),
    Liar(
        "negative_signal_codes",
        "a command killed by signal N returns -N (subprocess's convention) instead of 128+N",
        """
        async def execute(self, **kwargs):
            result = await super().execute(**kwargs)
            if result.return_code > 128:
                return result.model_copy(update={"return_code": 128 - result.return_code})
            return result
        """,
        caught_by=_by("test_exec::test_exit_codes_over_the_whole_byte_and_signals"),
    ),
    Liar(
        "high_exit_codes_become_1",
        "exit codes above 125 are reported as 1",
        """
        async def execute(self, **kwargs):
            result = await super().execute(**kwargs)
            if result.return_code > 125:
                return result.model_copy(update={"return_code": 1})
            return result
        """,
        caught_by=_by("test_exec::test_exit_codes_over_the_whole_byte_and_signals"),
    ),
    Liar(
        "output_limit_doubled",
        "output_limit is applied to stdout and stderr separately, so together they may reach twice it",
        """
        def _collector(self, on_stdout, on_stderr):
            return OutputCollector(limit=2 * self.config.output_limit, on_stdout=on_stdout, on_stderr=on_stderr)
        """,
        imports="from grainchain._output import OutputCollector",
        caught_by=_by("test_exec::test_the_output_limit_counts_stdout_plus_stderr"),
    ),
    Liar(
        "output_bytes_from_text",
        "stdout_bytes/stderr_bytes are the decoded text encoded again, not the bytes the command wrote",
        """
        async def execute(self, **kwargs):
            result = await super().execute(**kwargs)
            return result.model_copy(
                update={"stdout_bytes": result.stdout.encode(), "stderr_bytes": result.stderr.encode()}
            )
        """,
        caught_by=_by("test_exec::test_output_is_the_bytes_written_and_their_text"),
    ),
    Liar(
        "output_limit_counts_text",
        "output_limit counts the UTF-8 of the decoded text (3 bytes for each invalid byte), not the bytes",
        """
        def _collector(self, on_stdout, on_stderr):
            output = OutputCollector(limit=self.config.output_limit, on_stdout=on_stdout, on_stderr=on_stderr)
            feed = output.feed
            def by_text(stream, data):
                output._total += len(data.decode("utf-8", "replace").encode()) - len(data)
                feed(stream, data)
            output.feed = by_text
            return output
        """,
        imports="from grainchain._output import OutputCollector",
        caught_by=_by("test_exec::test_the_output_limit_counts_the_bytes_once"),
    ),
    Liar(
        "call_timeout_capped_by_config",
        "a call's timeout cannot exceed SandboxConfig.timeout (the smaller one wins)",
        """
        async def execute(self, **kwargs):
            if kwargs.get("timeout") is not None and self.config.timeout is not None:
                kwargs["timeout"] = min(kwargs["timeout"], self.config.timeout)
            return await super().execute(**kwargs)
        """,
        caught_by=_by("test_exec::test_a_call_timeout_replaces_the_config_default"),
    ),
    Liar(
        "missing_working_dir_created",
        "a working_dir that does not exist is created instead of raising FileNotFoundInSandboxError",
        """
        async def execute(self, **kwargs):
            if kwargs.get("working_dir"):
                await super().make_directory(kwargs["working_dir"])
            return await super().execute(**kwargs)
        """,
        caught_by=_by("test_exec::test_working_dir_must_exist_and_goes_where_cd_goes"),
    ),
    Liar(
        "config_env_wins",
        "SandboxConfig.environment_vars override a call's environment (the spec: the call wins)",
        """
        async def execute(self, **kwargs):
            env = {**(kwargs.get("environment") or {}), **self.config.environment_vars}
            return await super().execute(**{**kwargs, "environment": env})
        """,
        caught_by=_by("test_exec::test_the_call_environment_wins_over_the_config"),
    ),
    Liar(
        "upload_needs_parents",
        "upload_file fails with FileNotFoundInSandboxError when the parent directory is missing",
        """
        async def upload_file(self, path, content, mode="w"):
            parent = path.rsplit("/", 1)[0] if "/" in path else "."
            if not await super().file_exists(parent):
                raise FileNotFoundInSandboxError(parent, provider=self.provider_name)
            await super().upload_file(path, content, mode)
        """,
        imports="from grainchain.errors import FileNotFoundInSandboxError",
        caught_by=_by(
            "test_files::test_upload_modes_parents_and_deletes",
            "test_files::test_a_missing_path_raises_file_not_found",
        ),
    ),
    Liar(
        "missing_file_is_empty",
        "download_file of a missing file returns b'' (like `cat 2>/dev/null`)",
        """
        async def download_file(self, path):
            try:
                return await super().download_file(path)
            except FileNotFoundInSandboxError:
                return b""
        """,
        imports="from grainchain.errors import FileNotFoundInSandboxError",
        caught_by=_by("test_files::test_a_missing_path_raises_file_not_found"),
    ),
    Liar(
        "directories_do_not_exist",
        "file_exists is True only for regular files",
        """
        async def file_exists(self, path):
            if not await super().file_exists(path):
                return False
            return not (await super().get_file_info(path)).is_directory
        """,
        caught_by=_by("test_files::test_a_missing_path_raises_file_not_found"),
    ),
    Liar(
        "default_modes",
        "FileInfo.mode is a default (0o644 for files, 0o755 for directories), not the entry's",
        """
        def _fixed(self, info):
            return info.model_copy(update={"mode": 0o755 if info.is_directory else 0o644})

        async def list_files(self, path="."):
            return [self._fixed(i) for i in await super().list_files(path)]

        async def get_file_info(self, path):
            return self._fixed(await super().get_file_info(path))
        """,
        caught_by=_by("test_files::test_file_info_matches_what_commands_see"),
    ),
    Liar(
        "symlinks_unmarked",
        "FileInfo.is_symlink is always False",
        """
        async def list_files(self, path="."):
            return [i.model_copy(update={"is_symlink": False}) for i in await super().list_files(path)]

        async def get_file_info(self, path):
            return (await super().get_file_info(path)).model_copy(update={"is_symlink": False})
        """,
        caught_by=_by("test_files::test_file_info_matches_what_commands_see"),
    ),
    Liar(
        "refuse_sees_only_handles",
        "restore_snapshot(if_processes_running='refuse') counts only processes with a handle, not what "
        "`cmd &` left running (which the restore then kills)",
        """
        async def _running_processes(self):
            return [handle.command for handle in self._handles.running()]
        """,
        caught_by=_by("test_snapshots::test_restore_ends_running_processes_or_refuses_and_changes_nothing"),
    ),
    Liar(
        "restore_resets_modes",
        "after a restore every file has mode 0o644 (the snapshot kept no permission bits)",
        """
        async def _restore_snapshot(self, snapshot_id):
            await super()._restore_snapshot(snapshot_id)
            await super().execute(command="find . -type f -exec chmod 644 {} +")
        """,
        caught_by=_by("test_snapshots::test_restore_brings_back_exactly_the_tree"),
    ),
    Liar(
        "snapshot_skips_hidden",
        "snapshots leave out hidden entries (names starting with '.') at every depth",
        """
        async def create_snapshot(self, kind=SnapshotKind.filesystem):
            hide = (
                "find . -mindepth 1 -name '.*' -prune > ../.gc-hidden.list; "
                "tar cf ../.gc-hidden.tar -T ../.gc-hidden.list 2>/dev/null; "
                "xargs -d '\\\\n' rm -rf < ../.gc-hidden.list"
            )
            await super().execute(command=hide)
            try:
                return await super().create_snapshot(kind)
            finally:
                await super().execute(command="tar xf ../.gc-hidden.tar 2>/dev/null; rm -f ../.gc-hidden.*")
        """,
        caught_by=_by("test_snapshots::test_restore_brings_back_exactly_the_tree"),
    ),
    Liar(
        "async_forgets_call_env",
        "the async adapter drops a call's environment (the sync one is honest)",
        """
        async def execute(self, **kwargs):
            return await super().execute(**{**kwargs, "environment": None})
        """,
        only="async",
        caught_by=_by("test_exec::test_the_call_environment_wins_over_the_config"),
    ),
    Liar(
        "sync_streams_at_the_end",
        "the sync adapter calls on_stdout only after the command ended (the async one is honest)",
        """
        async def execute(self, **kwargs):
            callback, chunks = kwargs.get("on_stdout"), []
            if callback is not None:
                kwargs["on_stdout"] = chunks.append
            result = await super().execute(**kwargs)
            for chunk in chunks:
                callback(chunk)
            return result
        """,
        only="sync",
        caught_by=_by("test_examples::test_streaming_delivers_output_before_the_command_ends"),
    ),
]

# Every blind liar must be caught; which test catches it is the suite's business. The config a blind liar's
# probe used is not the suite's: the suite must meet the lie with the sandboxes its own tests make (only
# a liar that needs namespaces, e.g. for memory snapshots, runs isolated).
LIARS += [
    Liar(
        b.name,
        b.lie,
        b.methods,
        imports=b.imports,
        config=ISOLATED if "namespaces" in b.config else UNISOLATED,
        blind=True,
    )
    for b in BLIND_LIARS
]


MODULE = '''\
"""The local provider under another name, with one lie: {lie}."""

import contextlib

from grainchain import ProviderInfo
from grainchain.providers.local import _localfs as fs
from grainchain.providers.local._async.adapter import AsyncLocalAdapter
from grainchain._generated.providers import BUILTIN_PROVIDERS
from grainchain.providers.local._sync.adapter import LocalAdapter
from grainchain.errors import CommandTimeoutError, SnapshotNotFoundError
from grainchain.models import ExecutionResult, SnapshotKind
{imports}

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
    sync_methods = re.sub(r"\b(async|await) ", "", methods).replace("aclose(", "close(")
    (root / f"{module}.py").write_text(
        MODULE.format(
            lie=liar.lie,
            name=liar.name,
            module=module,
            imports=liar.imports,
            async_methods="    pass" if liar.only == "sync" else methods,
            sync_methods="    pass" if liar.only == "async" else sync_methods,
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


def _kill_leftovers(state: Path) -> list[int]:
    """Kill what a liar's sandboxes left running (a lie may be that close() leaves processes); their pids."""
    left = sandbox_processes(state)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def run_suite(root: Path, liar: Liar) -> Run:
    """`pytest --pyargs grainchain_conformance` against the liar, with its own state dir and no config,
    stopping at the first failure; once per client until a run fails."""
    work = root / liar.name
    site = work / "site"
    site.mkdir(parents=True)
    install(site, liar)
    state = root / "state" / liar.name
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        GRAINCHAIN_STATE_DIR=str(state),
        GRAINCHAIN_CONFIG=str(work / "no-config.toml"),
    )
    started = time.monotonic()
    for client in liar.clients:
        report = work / f"report-{client}.json"
        command = [
            *(sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-q", "--pyargs"),
            *(f"grainchain_conformance.{module}" for module in liar.modules()),
            *("--grainchain-provider", liar.name, "--grainchain-client", client),
            *("--grainchain-config", liar.config, "--grainchain-report", str(report)),
        ]
        proc = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        _kill_leftovers(state)
        if proc.returncode != 0:
            break
    failed = json.loads(report.read_text())["failed"] if report.exists() else []
    names = frozenset(node.rpartition("::")[2].partition("[")[0] for node in failed)
    return Run(proc.returncode, names, time.monotonic() - started, proc.stdout + proc.stderr)


def _unmount_under(root: Path) -> list[str]:
    """Detach every mount under `root` (deepest first): a liar's kept sandbox may keep its disk mounted, and
    a mount left in pytest's temporary directories fails its clean-up of old ones in a later run."""
    inside = sorted(mounts_under(root), key=len, reverse=True)
    for point in inside:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
    return inside


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """The suite's verdict on every liar and honest copy, eight runs at a time (much of a run is sleeping)."""
    root = tmp_path_factory.mktemp("teeth")
    everyone = [*HONEST, *LIARS]
    # the slowest first: honest copies run the whole suite, isolated ones restart holders
    order = sorted(everyone, key=lambda liar: (liar not in HONEST, liar.config == UNISOLATED))
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda liar: run_suite(root, liar), order)
        verdicts = {liar.name: run for liar, run in zip(order, results, strict=True)}
    print(f"\nconformance suite against each liar ({time.monotonic() - started:.1f} s in all):")
    for name, run in verdicts.items():
        print(f"  {name:34} exit {run.exit_code}  {run.seconds:5.1f} s  failed {sorted(run.failed)}")
    yield verdicts
    _unmount_under(root)


@pytest.mark.parametrize("honest", HONEST, ids=lambda li: li.name)
def test_the_honest_copies_pass(runs: dict[str, Run], honest: Liar) -> None:
    """Built and run exactly like the liars: what fails below is a lie, not the harness."""
    run = runs[honest.name]
    assert (run.exit_code, run.failed) == (0, frozenset()), run.describe(honest)


def test_names_are_unique() -> None:
    names = [liar.name for liar in [*HONEST, *LIARS]]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("liar", LIARS, ids=lambda li: li.name)
def test_each_lie_is_caught(runs: dict[str, Run], liar: Liar) -> None:
    """The suite fails on the liar, and (for ours) first in one of the tests meant to catch that lie."""
    run = runs[liar.name]
    assert run.exit_code == 1, run.describe(liar)
    assert run.failed, run.describe(liar)
    if liar.caught_by:
        assert run.failed <= liar.tests(), run.describe(liar)
