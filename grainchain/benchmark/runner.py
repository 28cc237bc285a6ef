"""Runs the benchmark: per provider, a fixed plan of steps; in each step grainchain and the raw baseline
take turns, iteration by iteration, so that drift of the machine hits both sides alike.

Everything is timed on the client with time.perf_counter around public API calls (grainchain.sync.Sandbox,
and grainchain.AsyncSandbox for the concurrent batch); set-up and checks are outside the timed spans.
Warm-up iterations run the same code and are thrown away.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from grainchain import AsyncSandbox, Feature, SandboxConfig, SnapshotKind
from grainchain.benchmark.machine import describe_machine
from grainchain.benchmark.raw import RawBaseline, RawBox, baseline_for
from grainchain.benchmark.results import (
    BenchmarkRun,
    Measurement,
    ProviderResult,
    RunSettings,
    Series,
    Status,
)
from grainchain.errors import CapabilityError, CommandTimeoutError
from grainchain.models import ExecutionResult
from grainchain.settings import Settings, load_settings
from grainchain.sync import Sandbox

KiB = 1024
MiB = 1024 * KiB


def format_size(size: int) -> str:
    """1024 -> "1 KiB", 50_000_000 -> "50 MB": the unit that gives a whole number."""
    for unit, factor in (("MiB", MiB), ("KiB", KiB), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Sizes:
    transfers: tuple[int, ...]  # bytes uploaded and downloaded
    list_entries: int  # files in the listed directory
    workspaces: tuple[tuple[int, int], ...]  # snapshotted workspaces: (files, bytes per file)
    concurrency: int  # sandboxes in one concurrent batch

    def describe(self) -> dict[str, Any]:
        return {
            "transfers": [format_size(s) for s in self.transfers],
            "list_entries": self.list_entries,
            "workspaces": [f"{files} files of {format_size(each)}" for files, each in self.workspaces],
            "concurrency": self.concurrency,
        }


FULL_SIZES = Sizes(
    transfers=(KiB, MiB, 10 * MiB, 100 * MiB),
    list_entries=1000,
    workspaces=((10, 1000), (50, 1000**2)),  # "small" and 50 MB
    concurrency=4,  # two per core on the 2-core machines this runs on
)
# --quick (CI smoke): seconds per provider; the numbers are not comparable with full runs
QUICK_SIZES = Sizes(
    transfers=(KiB, 64 * KiB, MiB), list_entries=100, workspaces=((10, 1000), (2, 1000**2)), concurrency=2
)


@dataclass
class Options:
    providers: list[str]
    configs: dict[str, SandboxConfig] = field(default_factory=dict)
    iterations: int = 20
    warmup: int = 2
    quick: bool = False
    measure_import: bool = True

    @property
    def sizes(self) -> Sizes:
        return QUICK_SIZES if self.quick else FULL_SIZES


class Op(NamedTuple):
    id: str  # stable: compare matches runs on it
    label: str
    group: str


@dataclass(frozen=True)
class Step:
    """Some operations measured together: one call of each side yields one sample of each operation."""

    kind: str
    ops: tuple[Op, ...]
    iterations: int
    warmup: int
    param: Any = None

    @property
    def units(self) -> int:
        return self.iterations + self.warmup


def _workspace_name(files: int, each: int) -> str:
    total = files * each
    return "small" if total < MiB else format_size(total).replace(" ", "")


def plan(options: Options) -> list[Step]:
    """The steps every provider runs, in order. Heavy steps (seconds per call on docker) run fewer times."""
    n, w = options.iterations, options.warmup
    few, few_w = max(min(n, 3), math.ceil(n / 4)), min(w, 1)
    if options.quick:  # a smoke test: once is enough to prove a heavy step works
        few, few_w = 1, 0
    sizes = options.sizes
    lifecycle = (
        Op("create", "create", "lifecycle"),
        Op("first_exec", "first exec", "lifecycle"),
        Op("close", "close", "lifecycle"),
    )
    steps = [
        Step("lifecycle", lifecycle, n, w),
        # a close right after a command timed out (or was cancelled): must not wait for the killed tree
        Step(
            "close_after_timeout",
            (Op("close_after_timeout", "close after a timeout", "lifecycle"),),
            few,
            few_w,
        ),
        Step("exec", (Op("exec_true", "exec true", "exec"),), n, w, "true"),
        Step("exec", (Op("exec_python", "exec python3 -c pass", "exec"),), n, w, "python3 -c pass"),
    ]
    for size in sizes.transfers:
        name, heavy = format_size(size), size >= 4 * MiB
        compact = name.replace(" ", "")
        for kind in ("upload", "download"):
            op = Op(f"{kind}_{compact}", f"{kind} {name}", "files")
            steps.append(Step(kind, (op,), few if heavy else n, few_w if heavy else w, size))
    entries = sizes.list_entries
    steps.append(
        Step("list", (Op(f"list_{entries}", f"list {entries} files", "files"),), few, few_w, entries)
    )
    for files, each in sizes.workspaces:
        ws = _workspace_name(files, each)
        ops = (
            Op(f"fs_snapshot_{ws}", f"fs snapshot {ws}", "snapshots"),
            Op(f"fs_restore_{ws}", f"fs restore {ws}", "snapshots"),
        )
        steps.append(Step("fs_snapshot", ops, few, few_w, (files, each)))
    memory = (
        Op("memory_snapshot", "memory snapshot", "memory"),
        Op("terminate", "terminate", "memory"),
        Op("wake_up", "wake_up (memory)", "memory"),
    )
    steps.append(Step("memory", memory, few, few_w))
    c = sizes.concurrency
    op = Op(f"concurrent_{c}", f"{c} concurrent sandboxes", "concurrency")
    steps.append(Step("concurrency", (op,), few, few_w, c))
    return steps


class Progress(Protocol):
    """Where the runner reports progress (the CLI draws a rich progress bar)."""

    def start(self, total: int) -> None: ...

    def step(self, label: str) -> None: ...

    def advance(self, units: int = 1) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def step(self, label: str) -> None:
        pass

    def advance(self, units: int = 1) -> None:
        pass


class BenchmarkError(RuntimeError):
    """A measured call did the wrong thing (a failed command, a short download): the attempt failed."""


class _Unsupported(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_T = TypeVar("_T")
Timings = dict[str, float]  # op id -> seconds of one call
Side = Callable[[], Timings]


@dataclass
class _Pair:
    ours: Side
    theirs: Side | None
    failed_sandboxes: int = 0  # of concurrent batches


@dataclass
class _Tally:
    samples: dict[str, list[float]]
    errors: int = 0
    first_error: str | None = None

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}".strip()[:500]

    def series(self, op: str) -> Series:
        return Series.of(self.samples[op], self.errors, self.first_error)


def _interleave(step: Step, pair: _Pair, progress: Progress) -> tuple[_Tally, _Tally | None]:
    """Run both sides step.units times, alternating which goes first; keep samples after the warm-up."""
    ours = _Tally({op.id: [] for op in step.ops})
    theirs = _Tally({op.id: [] for op in step.ops}) if pair.theirs is not None else None
    for i in range(step.units):
        sides: list[tuple[Side, _Tally]] = [(pair.ours, ours)]
        if pair.theirs is not None and theirs is not None:
            sides.append((pair.theirs, theirs))
        for side, tally in sides if i % 2 == 0 else reversed(sides):
            try:
                timings = side()
            except CapabilityError as exc:
                if side is pair.ours:
                    raise _Unsupported(exc.message) from exc
                tally.fail(exc)
                continue
            except Exception as exc:
                tally.fail(exc)
                continue
            if i >= step.warmup:
                for op, seconds in timings.items():
                    tally.samples[op].append(seconds)
        progress.advance()
    return ours, theirs


def _timed(op: str, call: Callable[[], _T], check: Callable[[_T], object] = lambda _: None) -> Timings:
    """One call on the clock; its check runs after the clock has stopped."""
    t0 = time.perf_counter()
    got = call()
    elapsed = time.perf_counter() - t0
    check(got)
    return {op: elapsed}


def _check(result: ExecutionResult) -> None:
    if result.return_code != 0:
        raise BenchmarkError(
            f"`{result.command}` exited {result.return_code}: {result.stderr.strip()[-300:]}"
        )


def _check_raw(command: str, outcome: tuple[int, bytes, bytes]) -> None:
    code, _, stderr = outcome
    if code != 0:
        raise BenchmarkError(f"`{command}` exited {code}: {stderr.decode(errors='replace').strip()[-300:]}")


def _fill_script(directory: str, files: int, each: int | None) -> str:
    """Shell that makes `files` files in `directory`: empty, or of `each` random bytes."""
    content = f"head -c {each} /dev/urandom" if each else ":"
    return (
        f"mkdir -p {directory} && i=0; while [ $i -lt {files} ]; do {content} > {directory}/f$i; "
        "i=$((i+1)); done"
    )


class _ProviderRun:
    def __init__(self, provider: str, config: SandboxConfig, settings: Settings, progress: Progress) -> None:
        self.provider = provider
        self.config = config
        self.settings = settings
        self.progress = progress
        self.baseline: RawBaseline | None = None
        self.sandbox: Sandbox | None = None
        self.box: RawBox | None = None
        self._impls: dict[str, Callable[[Step], contextlib.AbstractContextManager[_Pair]]] = {
            "lifecycle": self._lifecycle,
            "close_after_timeout": self._close_after_timeout,
            "exec": self._exec,
            "upload": self._upload,
            "download": self._download,
            "list": self._list,
            "fs_snapshot": self._fs_snapshot,
            "memory": self._memory,
            "concurrency": self._concurrency,
        }

    # -- the run --------------------------------------------------------------------------------------

    def run(self, steps: list[Step]) -> ProviderResult:
        result = ProviderResult(
            provider=self.provider, config=self.config.model_dump(mode="json", exclude_unset=True)
        )
        remaining = sum(step.units for step in steps)
        with ExitStack() as stack:
            try:
                # one long-lived sandbox (and raw box) for the steady-state steps; also proves the
                # provider works at all before anything is timed
                self.sandbox = stack.enter_context(Sandbox(self.provider, self.config))
                self.baseline = baseline_for(self.provider, self.config, self.settings)
                if self.baseline is not None:
                    stack.callback(self.baseline.close)
                    self.box = self.baseline.create()
                    stack.callback(self.box.close)
            except Exception as exc:
                result.error = f"cannot start: {type(exc).__name__}: {exc}"
                self.progress.advance(remaining)
                return result
            result.capabilities = {f.value: level.value for f, level in self.sandbox.capabilities.items()}
            result.raw_baseline = self.baseline.description if self.baseline is not None else None
            for step in steps:
                result.measurements.extend(self._run_step(step))
        return result

    def _run_step(self, step: Step) -> list[Measurement]:
        self.progress.step(f"{self.provider}: {step.ops[0].label}")
        try:
            with self._impls[step.kind](step) as pair:
                ours, theirs = _interleave(step, pair, self.progress)
        except _Unsupported as exc:
            self.progress.advance(step.units)  # at most: the bar may overshoot a little, never stall
            return [
                Measurement(
                    op=op.id, label=op.label, group=op.group, status=Status.unsupported, note=exc.reason
                )
                for op in step.ops
            ]
        except Exception as exc:  # set-up failed: nothing was measured
            self.progress.advance(step.units)
            failed = _Tally({op.id: [] for op in step.ops})
            failed.fail(exc)
            return [
                Measurement(
                    op=op.id,
                    label=op.label,
                    group=op.group,
                    status=Status.error,
                    grainchain=failed.series(op.id),
                )
                for op in step.ops
            ]
        measurements = []
        for op in step.ops:
            m = Measurement(
                op=op.id,
                label=op.label,
                group=op.group,
                status=Status.ok if ours.samples[op.id] else Status.error,
                grainchain=ours.series(op.id),
                raw=theirs.series(op.id) if theirs is not None else None,
            )
            if step.kind == "concurrency" and m.grainchain.summary is not None:
                m.extra = {
                    "sandboxes": float(step.param),
                    "sandboxes_per_second": step.param / m.grainchain.summary.p50,
                    "failed_sandboxes": float(pair.failed_sandboxes),
                }
            measurements.append(m)
        return measurements

    @contextmanager
    def _new_pair(self) -> Iterator[tuple[Sandbox, RawBox | None]]:
        """A fresh sandbox and raw box for a step that changes them wholesale (restores, terminate)."""
        with ExitStack() as stack:
            sandbox = stack.enter_context(Sandbox(self.provider, self.config))
            box = None
            if self.baseline is not None:
                box = self.baseline.create()
                stack.callback(box.close)
            yield sandbox, box

    # -- steps: each yields the two sides, after its set-up ---------------------------------------------

    @contextmanager
    def _lifecycle(self, step: Step) -> Iterator[_Pair]:
        def ours() -> Timings:
            t0 = time.perf_counter()
            sandbox = Sandbox(self.provider, self.config)
            try:
                sandbox.start()
                t1 = time.perf_counter()
                result = sandbox.execute("true")
                t2 = time.perf_counter()
            except BaseException:
                sandbox.close()
                raise
            sandbox.close()
            t3 = time.perf_counter()
            _check(result)
            return {"create": t1 - t0, "first_exec": t2 - t1, "close": t3 - t2}

        def theirs() -> Timings:
            assert self.baseline is not None
            t0 = time.perf_counter()
            box = self.baseline.create()
            try:
                t1 = time.perf_counter()
                outcome = box.exec("true")
                t2 = time.perf_counter()
            except BaseException:
                box.close()
                raise
            box.close()
            t3 = time.perf_counter()
            _check_raw("true", outcome)
            return {"create": t1 - t0, "first_exec": t2 - t1, "close": t3 - t2}

        yield _Pair(ours, theirs if self.baseline is not None else None)

    @contextmanager
    def _close_after_timeout(self, step: Step) -> Iterator[_Pair]:
        def ours() -> Timings:
            sandbox = Sandbox(self.provider, self.config).start()
            try:
                sandbox.execute("sleep 60", timeout=0.2)
            except CommandTimeoutError:
                pass
            else:
                sandbox.close()
                raise BenchmarkError("`sleep 60` with timeout=0.2 did not time out")
            t0 = time.perf_counter()
            sandbox.close()
            return {"close_after_timeout": time.perf_counter() - t0}

        yield _Pair(ours, None)  # the raw calls have no timeouts of their own to compare with

    def _steady(self) -> tuple[Sandbox, RawBox | None]:
        assert self.sandbox is not None
        return self.sandbox, self.box

    @contextmanager
    def _exec(self, step: Step) -> Iterator[_Pair]:
        sandbox, box = self._steady()
        command: str = step.param
        op = step.ops[0].id

        def ours() -> Timings:
            return _timed(op, lambda: sandbox.execute(command), _check)

        def theirs() -> Timings:
            assert box is not None
            return _timed(op, lambda: box.exec(command), lambda outcome: _check_raw(command, outcome))

        yield _Pair(ours, theirs if box is not None else None)

    def _bench_dir(self, sandbox: Sandbox, box: RawBox | None) -> None:
        _check(sandbox.execute("mkdir -p bench"))
        if box is not None:
            _check_raw("mkdir", box.exec("mkdir -p bench"))

    @contextmanager
    def _upload(self, step: Step) -> Iterator[_Pair]:
        sandbox, box = self._steady()
        self._bench_dir(sandbox, box)
        data = _random_bytes(step.param)
        path, op = f"bench/up-{step.param}", step.ops[0].id

        def ours() -> Timings:
            return _timed(op, lambda: sandbox.upload_file(path, data, "wb"))

        def theirs() -> Timings:
            assert box is not None
            return _timed(op, lambda: box.upload(path, data))

        yield _Pair(ours, theirs if box is not None else None)

    @contextmanager
    def _download(self, step: Step) -> Iterator[_Pair]:
        sandbox, box = self._steady()
        self._bench_dir(sandbox, box)
        data = _random_bytes(step.param)
        path, op = f"bench/down-{step.param}", step.ops[0].id
        sandbox.upload_file(path, data, "wb")
        if box is not None:
            box.upload(path, data)

        def check(got: bytes) -> None:
            if got != data:
                raise BenchmarkError(f"downloaded {len(got)} bytes, not the {len(data)} uploaded")

        def ours() -> Timings:
            return _timed(op, lambda: sandbox.download_file(path), check)

        def theirs() -> Timings:
            assert box is not None
            return _timed(op, lambda: box.download(path), check)

        yield _Pair(ours, theirs if box is not None else None)

    @contextmanager
    def _list(self, step: Step) -> Iterator[_Pair]:
        sandbox, box = self._steady()
        entries: int = step.param
        directory, op = f"bench/list-{entries}", step.ops[0].id
        script = _fill_script(directory, entries, None)
        _check(sandbox.execute(script))
        if box is not None:
            _check_raw("fill", box.exec(script))

        def check(found: int) -> None:
            if found != entries:
                raise BenchmarkError(f"listed {found} entries, not {entries}")

        def ours() -> Timings:
            return _timed(op, lambda: len(sandbox.list_files(directory)), check)

        def theirs() -> Timings:
            assert box is not None
            return _timed(op, lambda: box.list(directory), check)

        yield _Pair(ours, theirs if box is not None else None)

    @contextmanager
    def _fs_snapshot(self, step: Step) -> Iterator[_Pair]:
        files, each = step.param
        snap_op, restore_op = (op.id for op in step.ops)
        assert self.sandbox is not None
        if not self.sandbox.supports(Feature.SNAPSHOT_FILESYSTEM):
            raise _Unsupported(f"{self.provider} capabilities: snapshot.filesystem unsupported")
        with self._new_pair() as (sandbox, box):
            script = _fill_script("ws", files, each)
            _check(sandbox.execute(script))
            if box is not None:
                _check_raw("fill", box.exec(script))

            def ours() -> Timings:
                t0 = time.perf_counter()
                snapshot = sandbox.create_snapshot()
                t1 = time.perf_counter()
                try:
                    sandbox.upload_file("ws/added", b"after the snapshot")
                    t2 = time.perf_counter()
                    sandbox.restore_snapshot(snapshot)
                    t3 = time.perf_counter()
                    if sandbox.file_exists("ws/added"):
                        raise BenchmarkError("restore_snapshot kept a file written after the snapshot")
                finally:
                    sandbox.delete_snapshot(snapshot)
                return {snap_op: t1 - t0, restore_op: t3 - t2}

            def theirs() -> Timings:
                assert box is not None
                t0 = time.perf_counter()
                snapshot = box.snapshot()
                t1 = time.perf_counter()
                try:
                    box.upload("ws/added", b"after the snapshot")
                    t2 = time.perf_counter()
                    box.restore(snapshot)
                    t3 = time.perf_counter()
                finally:
                    box.delete_snapshot(snapshot)
                return {snap_op: t1 - t0, restore_op: t3 - t2}

            yield _Pair(ours, theirs if box is not None else None)

    @contextmanager
    def _memory(self, step: Step) -> Iterator[_Pair]:
        snap_op, terminate_op, wake_op = (op.id for op in step.ops)
        assert self.sandbox is not None
        lacking = [
            f.value
            for f in (Feature.SNAPSHOT_MEMORY, Feature.LIFECYCLE_TERMINATE_WAKE)
            if not self.sandbox.supports(f)
        ]
        if lacking:
            raise _Unsupported(f"{self.provider} capabilities: {', '.join(lacking)} unsupported")
        with self._new_pair() as (sandbox, box):

            def ours() -> Timings:
                t0 = time.perf_counter()
                snapshot = sandbox.create_snapshot(kind=SnapshotKind.memory)
                t1 = time.perf_counter()
                try:
                    sandbox.terminate()
                    t2 = time.perf_counter()
                    sandbox.wake_up(snapshot)
                    t3 = time.perf_counter()
                    _check(sandbox.execute("true"))
                finally:
                    with contextlib.suppress(Exception):
                        sandbox.delete_snapshot(snapshot)
                return {snap_op: t1 - t0, terminate_op: t2 - t1, wake_op: t3 - t2}

            def theirs() -> Timings:
                assert box is not None
                t0 = time.perf_counter()
                snapshot = box.memory_snapshot()
                t1 = time.perf_counter()
                box.terminate()
                t2 = time.perf_counter()
                box.wake_up(snapshot)
                t3 = time.perf_counter()
                _check_raw("true", box.exec("true"))
                return {snap_op: t1 - t0, terminate_op: t2 - t1, wake_op: t3 - t2}

            raw = box is not None and box.supports_memory
            yield _Pair(ours, theirs if raw else None)

    @contextmanager
    def _concurrency(self, step: Step) -> Iterator[_Pair]:
        count: int = step.param
        op = step.ops[0].id
        pair = _Pair(lambda: {}, None)

        async def one() -> None:
            async with AsyncSandbox(self.provider, self.config) as sandbox:
                _check(await sandbox.execute("true"))

        async def batch() -> tuple[float, list[BaseException]]:
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
            elapsed = time.perf_counter() - t0
            return elapsed, [o for o in outcomes if isinstance(o, BaseException)]

        def ours() -> Timings:
            elapsed, failures = asyncio.run(batch())
            if failures:
                pair.failed_sandboxes += len(failures)
                raise failures[0]
            return {op: elapsed}

        pair.ours = ours
        baseline = self.baseline
        if baseline is None:
            yield pair
            return

        def raw_one() -> None:
            box = baseline.create()
            try:
                _check_raw("true", box.exec("true"))
            finally:
                box.close()

        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="bench-raw") as pool:

            def theirs() -> Timings:
                t0 = time.perf_counter()
                futures = [pool.submit(raw_one) for _ in range(count)]
                errors = [f.exception() for f in futures]  # waits for each
                elapsed = time.perf_counter() - t0
                failed = [e for e in errors if e is not None]
                if failed:
                    raise failed[0]
                return {op: elapsed}

            pair.theirs = theirs
            yield pair


def _random_bytes(size: int) -> bytes:
    return os.urandom(size)  # incompressible, so that no layer on the way can cheat


# -- import time ------------------------------------------------------------------------------------------

# modules `import grainchain` must not load: provider SDKs, the CLI's/benchmark's own dependencies, the
# settings' (loaded with the facade, on first use of a name such as grainchain.Sandbox) and the repository
# tools' (spec/, codegen/)
HEAVY_MODULES = (
    "httpx",
    "typer",
    "rich",
    "matplotlib",
    "pydantic_settings",
    "yaml",
    "jsonschema",
    "e2b",
    "morphcloud",
    "daytona",
    "modal",
)
IMPORT_BUDGET_SECONDS = 0.150
"""What `import grainchain` may add to a bare interpreter's start (issue point 10)."""

# the op measured (its Measurement is BenchmarkRun.import_time), and the import most programs do next,
# which loads the facade, the models and pydantic: recorded in the measurement's extra
_IMPORT = Op("import_grainchain", "import grainchain", "python")
_IMPORT_SANDBOX = "from grainchain import Sandbox"


def _import_details() -> tuple[float | None, list[str]]:
    """-X importtime's cumulative microseconds for grainchain, and the heavy modules it loaded."""
    probe = f"import sys, grainchain; print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None, []
    cumulative = None
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| grainchain$", line)
        if match:
            cumulative = int(match.group(1)) / 1e6
    return cumulative, done.stdout.split()


def _overhead(ours: list[float], bare: list[float], paired: bool) -> float:
    """What the import adds to a bare interpreter: the median of the paired differences (each pair ran
    back to back, so drift of the machine cancels); the difference of the medians if an attempt failed."""
    if paired and len(ours) == len(bare):
        return statistics.median(a - b for a, b in zip(ours, bare, strict=True))
    return statistics.median(ours) - statistics.median(bare)


def measure_import(iterations: int, warmup: int, progress: Progress) -> Measurement:
    """Wall time of `python -c "import grainchain"` against `python -c pass` (each a fresh interpreter),
    alternating; also `from grainchain import Sandbox` against the same bare runs."""
    sandbox_op = "import_sandbox"
    step = Step("import", (_IMPORT, Op(sandbox_op, _IMPORT_SANDBOX, "python")), iterations, warmup)

    def interpreter(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - t0

    def ours() -> Timings:
        return {_IMPORT.id: interpreter("import grainchain"), sandbox_op: interpreter(_IMPORT_SANDBOX)}

    def bare() -> Timings:
        seconds = interpreter("pass")  # one bare start is the baseline of both
        return {_IMPORT.id: seconds, sandbox_op: seconds}

    progress.step("python: import grainchain")
    mine, theirs = _interleave(step, _Pair(ours, bare), progress)
    assert theirs is not None
    measurement = Measurement(
        op=_IMPORT.id,
        label=_IMPORT.label,
        group=_IMPORT.group,
        status=Status.ok if mine.samples[_IMPORT.id] else Status.error,
        grainchain=mine.series(_IMPORT.id),
        raw=theirs.series(_IMPORT.id),
    )
    bare_samples, paired = theirs.samples[_IMPORT.id], not (mine.errors or theirs.errors)
    if mine.samples[_IMPORT.id] and bare_samples:
        measurement.extra["overhead_seconds"] = _overhead(mine.samples[_IMPORT.id], bare_samples, paired)
        measurement.extra["budget_seconds"] = IMPORT_BUDGET_SECONDS
    if mine.samples[sandbox_op] and bare_samples:
        measurement.extra["sandbox_import_overhead_seconds"] = _overhead(
            mine.samples[sandbox_op], bare_samples, paired
        )
    cumulative, heavy = _import_details()
    if cumulative is not None:
        measurement.extra["importtime_cumulative_seconds"] = cumulative
    measurement.note = (
        f"loads {', '.join(heavy)}: provider SDKs and CLI libraries should load only when used"
        if heavy
        else f"loads none of {', '.join(HEAVY_MODULES)}"
    )
    return measurement


# -- entry point ------------------------------------------------------------------------------------------


def run_benchmark(options: Options, progress: Progress | None = None) -> BenchmarkRun:
    """Measure every provider of `options` in turn; failures are recorded in the result, never raised."""
    sink = progress or _Silent()
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    steps = plan(options)
    sink.start(
        len(options.providers) * sum(s.units for s in steps)
        + (options.iterations + options.warmup if options.measure_import else 0)
    )
    settings = load_settings()
    run = BenchmarkRun(
        started_at=started_at,
        machine=describe_machine(with_docker="docker" in options.providers),
        settings=RunSettings(
            providers=options.providers,
            iterations=options.iterations,
            warmup=options.warmup,
            quick=options.quick,
            sizes=options.sizes.describe(),
        ),
    )
    if options.measure_import:
        run.import_time = measure_import(options.iterations, options.warmup, sink)
    for provider in options.providers:
        config = options.configs.get(provider, SandboxConfig())
        run.providers.append(_ProviderRun(provider, config, settings, sink).run(steps))
    run.duration_seconds = time.perf_counter() - t0
    return run
