"""Random sequences of operations, each observation checked against a model of the sandbox.

Rules for features the provider lacks are never enabled (their CapabilityError is checked by a rule of its
own and by test_unsupported.py). On failure Hypothesis prints the shrunk sequence of calls that reproduces it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import random
import shlex
import uuid
from collections.abc import Callable
from typing import ClassVar, TypeVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from grainchain.adapters import Feature
from grainchain.errors import CapabilityError, SnapshotNotFoundError
from grainchain.models import SnapshotKind
from grainchain_conformance.model import SAFE_NAME_ALPHABET, TreeModel
from grainchain_conformance.probes import SANDBOX_PROBES
from grainchain_conformance.promises import checks
from grainchain_conformance.target import ConformanceTarget

_PLAIN_NAMES = st.text(SAFE_NAME_ALPHABET, min_size=1, max_size=16)
# hidden files and leading dashes are drawn on purpose, not only by chance
NAMES = st.one_of(
    _PLAIN_NAMES, st.builds("{}{}".format, st.sampled_from([".", "-", "--"]), _PLAIN_NAMES)
).filter(lambda n: n not in (".", ".."))
MODES = st.sampled_from([0o600, 0o640, 0o644, 0o700, 0o750, 0o755])
SIGNALS = st.sampled_from([6, 9, 10, 12, 14, 15])  # as in test_exec.py: none inherited as ignored
CONTENT = st.one_of(
    st.binary(max_size=64),  # any byte values; Hypothesis keeps these short
    # and sizes from empty to past the 64 KiB chunks transfers are often cut into (bytes from a seed: drawing
    # each byte would make big files rare and slow to generate)
    st.builds(lambda size, seed: random.Random(seed).randbytes(size), st.integers(0, 100_000), st.integers()),
)
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)


RuleT = TypeVar("RuleT", bound=Callable[..., None])


def _needs(*features: Feature) -> Callable[[RuleT], RuleT]:
    """Enable a rule only where the provider supports every one of `features`."""
    decorator: Callable[[RuleT], RuleT] = precondition(
        lambda self: all(self.target.supports(f) for f in features)
    )
    return decorator


class SandboxMachine(RuleBasedStateMachine):
    target: ClassVar[ConformanceTarget]

    def __init__(self) -> None:
        super().__init__()
        self.model = TreeModel()
        # in creation order: ids are the provider's (often random), so a choice among them sorted by id would
        # pick another snapshot when Hypothesis replays the same draws, and fail as flaky generation
        self.snapshots: dict[str, TreeModel] = {}
        self._stack = contextlib.ExitStack()
        self.sandbox = self._stack.enter_context(self.target.sandbox())
        self.base = f"gc-conformance-{uuid.uuid4().hex[:8]}"
        if self.target.supports(Feature.FILES):
            self.sandbox.make_directory(self.base)
        else:
            self.sandbox.execute(f"mkdir -p {shlex.quote(self.base)}")

    def teardown(self) -> None:
        try:
            if self.target.supports(Feature.SNAPSHOT_FILESYSTEM):
                for snapshot_id in self.snapshots:
                    with contextlib.suppress(SnapshotNotFoundError):
                        self.sandbox.delete_snapshot(snapshot_id)
        finally:
            self._stack.close()

    # -- helpers --------------------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def draw_new_path(self, data: st.DataObject) -> str:
        parent = data.draw(st.sampled_from(["", *sorted(self.model.dirs)]), label="parent")
        name = data.draw(NAMES, label="name")
        return f"{parent}/{name}" if parent else name

    def sandbox_tree(self, rel: str = "") -> dict[str, tuple[bool, int]]:
        """The sandbox's tree under the base directory, read with list_files."""
        tree: dict[str, tuple[bool, int]] = {}
        for info in self.sandbox.list_files(self.path(rel)):
            child = f"{rel}/{info.name}" if rel else info.name
            tree[child] = (info.is_directory, 0 if info.is_directory else info.size)
            if info.is_directory:
                tree.update(self.sandbox_tree(child))
        return tree

    def assert_tree_matches(self) -> None:
        assert self.sandbox_tree() == self.model.tree(), "the sandbox's files differ from the model"

    def assert_contents_match(self) -> None:
        """Every file byte for byte, and the modes set by chmod (where the provider reports modes)."""
        for rel, data in self.model.files.items():
            assert self.sandbox.download_file(self.path(rel)) == data, f"{rel!r} has other contents"
        for rel, mode in self.model.modes.items():
            shown = self.sandbox.get_file_info(self.path(rel)).mode
            assert shown in (None, mode), f"{rel!r} has mode {oct(shown or 0)}, not {oct(mode)}"

    # -- files ----------------------------------------------------------------------------------------

    @_needs(Feature.FILES)
    @rule(data=st.data(), content=CONTENT)
    @checks("op:upload_file", "param:upload_file.content", "param:upload_file.mode")
    def upload_new_file(self, data: st.DataObject, content: bytes) -> None:
        rel = self.draw_new_path(data)
        if self.model.can_write_file(rel):
            self.sandbox.upload_file(self.path(rel), content, mode="wb")
            self.model.write(rel, content)

    @_needs(Feature.FILES)
    @precondition(lambda self: self.model.files)
    @rule(data=st.data(), text=TEXT)
    @checks("op:upload_file", "param:upload_file.content")
    def overwrite_with_text(self, data: st.DataObject, text: str) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.files)))
        self.sandbox.upload_file(self.path(rel), text)  # mode "w": str is written as UTF-8
        self.model.write(rel, text.encode("utf-8"))

    @_needs(Feature.FILES)
    @precondition(lambda self: self.model.files)
    @rule(data=st.data(), content=CONTENT)
    @checks("param:upload_file.mode")
    def append_bytes(self, data: st.DataObject, content: bytes) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.files)))
        self.sandbox.upload_file(self.path(rel), content, mode="ab")
        self.model.write(rel, content, append=True)

    @_needs(Feature.FILES)
    @rule(data=st.data())
    @checks("op:make_directory")
    def make_directory(self, data: st.DataObject) -> None:
        rel = self.draw_new_path(data)
        if self.model.can_make_dir(rel):
            self.sandbox.make_directory(self.path(rel))
            self.model.make_dir(rel)

    @_needs(Feature.FILES)
    @precondition(lambda self: self.model.files or self.model.dirs)
    @rule(data=st.data())
    @checks("op:delete_file", "op:file_exists")
    def delete(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(sorted([*self.model.files, *self.model.dirs])))
        self.sandbox.delete_file(self.path(rel))
        self.model.delete(rel)
        assert not self.sandbox.file_exists(self.path(rel))

    @_needs(Feature.FILES)
    @precondition(lambda self: self.model.files)
    @rule(data=st.data())
    @checks("op:download_file")
    def download_matches(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.files)))
        assert self.sandbox.download_file(self.path(rel)) == self.model.files[rel]

    @_needs(Feature.FILES)
    @rule(data=st.data())
    @checks("op:list_files", "field:FileInfo.name", "field:FileInfo.size", "field:FileInfo.is_directory")
    def listing_matches(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(["", *sorted(self.model.dirs)]))
        listed = {
            i.name: (i.is_directory, 0 if i.is_directory else i.size)
            for i in self.sandbox.list_files(self.path(rel))
        }
        assert listed == self.model.listing(rel)

    @_needs(Feature.FILES)
    @rule()
    def whole_tree_matches(self) -> None:
        self.assert_tree_matches()

    # -- commands -------------------------------------------------------------------------------------

    @_needs(Feature.FILES, Feature.EXEC)
    @precondition(lambda self: self.model.files)
    @rule(data=st.data())
    @checks("feature:files", "feature:exec")
    def command_reads_what_files_wrote(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.files)))
        result = self.sandbox.execute(f"base64 < {shlex.quote(self.path(rel))}")
        assert result.return_code == 0, result.stderr
        assert base64.b64decode(result.stdout) == self.model.files[rel]

    @_needs(Feature.FILES, Feature.EXEC)
    @rule(data=st.data(), text=TEXT)
    @checks("feature:files", "feature:exec")
    def files_read_what_command_wrote(self, data: st.DataObject, text: str) -> None:
        rel = self.draw_new_path(data)
        if not self.model.can_write_file(rel) or any(
            a not in self.model.dirs for a in self.model.ancestors(rel)
        ):
            return
        result = self.sandbox.execute(f"printf '%s' {shlex.quote(text)} > {shlex.quote(self.path(rel))}")
        assert result.return_code == 0, result.stderr
        self.model.write(rel, text.encode("utf-8"))
        assert self.sandbox.download_file(self.path(rel)) == text.encode("utf-8")

    @_needs(Feature.EXEC)
    @rule(name=st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True), value=TEXT)
    @checks("param:execute.environment")
    def environment_is_passed(self, name: str, value: str) -> None:
        result = self.sandbox.execute(f'printf "%s" "${name}"', environment={name: value})
        assert result.stdout == value

    @_needs(Feature.EXEC)
    @rule(out=TEXT, err=TEXT, code=st.integers(0, 255))
    @checks(
        "convention:exit_codes",
        "field:ExecutionResult.return_code",
        "field:ExecutionResult.stdout",
        "field:ExecutionResult.stderr",
    )
    def exit_code_and_streams_are_kept(self, out: str, err: str, code: int) -> None:
        result = self.sandbox.execute(
            f"printf '%s' {shlex.quote(out)}; printf '%s' {shlex.quote(err)} >&2; exit {code}"
        )
        assert (result.return_code, result.stdout, result.stderr) == (code, out, err)
        assert result.success is (code == 0)

    @_needs(Feature.EXEC, Feature.FILES)
    @rule(data=st.data())
    @checks("param:execute.working_dir", "field:FileInfo.path")
    def working_dir_is_honoured(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(["", *sorted(self.model.dirs)]))
        result = self.sandbox.execute("pwd", working_dir=self.path(rel))
        assert result.stdout.rstrip("\n") == self.sandbox.get_file_info(self.path(rel)).path

    @_needs(Feature.EXEC)
    @rule(out=TEXT, number=SIGNALS)
    @checks("convention:exit_codes", "field:ExecutionResult.return_code")
    def killed_by_a_signal(self, out: str, number: int) -> None:
        result = self.sandbox.execute(f"printf '%s' {shlex.quote(out)}; kill -{number} $$; sleep 5")
        assert (result.return_code, result.stdout) == (128 + number, out)

    @_needs(Feature.FILES, Feature.EXEC)
    @precondition(lambda self: self.model.files)
    @rule(data=st.data(), mode=MODES)
    @checks("field:FileInfo.mode", "feature:snapshot.filesystem")
    def change_mode(self, data: st.DataObject, mode: int) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.files)))
        result = self.sandbox.execute(f"chmod {mode:o} {shlex.quote(self.path(rel))}")
        assert result.return_code == 0, result.stderr
        self.model.modes[rel] = mode
        shown = self.sandbox.get_file_info(self.path(rel)).mode
        assert shown in (None, mode), f"chmod {mode:o}, get_file_info says {oct(shown or 0)}"

    @_needs(Feature.EXEC_STREAMING)
    @rule(lines=st.lists(st.text(SAFE_NAME_ALPHABET, max_size=30), min_size=1, max_size=5))
    @checks("feature:exec.streaming", "param:execute.on_stdout", "param:execute.on_stderr")
    def streaming_delivers_everything(self, lines: list[str]) -> None:
        out: list[str] = []
        err: list[str] = []
        script = "; ".join(f"printf '%s\\n' {q}; printf '%s\\n' {q} >&2" for q in map(shlex.quote, lines))
        result = self.sandbox.execute(script, on_stdout=out.append, on_stderr=err.append)
        expected = "".join(f"{line}\n" for line in lines)
        assert "".join(out) == result.stdout == expected
        assert "".join(err) == result.stderr == expected

    @_needs(Feature.PROCESS_BACKGROUND)
    @rule(out=TEXT, code=st.integers(0, 255))
    @checks("op:start_process", "feature:process.background")
    def background_process_reports_its_result(self, out: str, code: int) -> None:
        handle = self.sandbox.start_process(f"printf '%s' {shlex.quote(out)}; exit {code}")
        result = handle.wait(timeout=30)
        assert (result.return_code, result.stdout) == (code, out)

    # -- snapshots and lifecycle ----------------------------------------------------------------------

    @_needs(Feature.SNAPSHOT_FILESYSTEM)
    @rule()
    @checks("op:create_snapshot")
    def create_snapshot(self) -> None:
        snapshot_id = self.sandbox.create_snapshot()
        assert snapshot_id not in self.snapshots, "snapshot ids must be unique"
        self.snapshots[snapshot_id] = self.model.copy()

    @_needs(Feature.SNAPSHOT_MEMORY)
    @rule()
    @checks("feature:snapshot.memory")
    def create_memory_snapshot(self) -> None:
        snapshot_id = self.sandbox.create_snapshot(kind=SnapshotKind.memory)
        assert snapshot_id not in self.snapshots, "snapshot ids must be unique"
        self.snapshots[snapshot_id] = self.model.copy()

    @_needs(Feature.SNAPSHOT_FILESYSTEM)
    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    @checks("op:restore_snapshot", "feature:snapshot.filesystem")
    def restore_snapshot(self, data: st.DataObject) -> None:
        snapshot_id = data.draw(st.sampled_from(list(self.snapshots)))
        self.sandbox.restore_snapshot(snapshot_id)
        self.model = self.snapshots[snapshot_id].copy()
        if self.target.supports(Feature.FILES):
            self.assert_tree_matches()
            self.assert_contents_match()

    @_needs(Feature.SNAPSHOT_FILESYSTEM, Feature.FILES)
    @rule(content=CONTENT)
    @checks("op:restore_snapshot", "feature:snapshot.filesystem")
    def restore_undoes_later_changes(self, content: bytes) -> None:
        """Snapshot, change a file and add one, restore: random sequences rarely give a restore work to do."""
        snapshot_id = self.sandbox.create_snapshot()
        assert snapshot_id not in self.snapshots, "snapshot ids must be unique"
        self.snapshots[snapshot_id] = before = self.model.copy()
        changed = sorted(before.files)[:1]
        for rel in changed:
            self.sandbox.upload_file(self.path(rel), b"changed after the snapshot", mode="ab")
        added = next(name for i in itertools.count() if (name := f"added-{i}") not in self.model.tree())
        self.sandbox.upload_file(self.path(added), content, mode="wb")
        self.sandbox.restore_snapshot(snapshot_id)
        self.model = before.copy()
        self.assert_tree_matches()
        self.assert_contents_match()

    @_needs(Feature.SNAPSHOT_FILESYSTEM)
    @precondition(lambda self: self.snapshots)
    @rule(data=st.data())
    @checks("op:delete_snapshot", "raises:restore_snapshot.SnapshotNotFoundError")
    def deleted_snapshot_is_gone(self, data: st.DataObject) -> None:
        snapshot_id = data.draw(st.sampled_from(list(self.snapshots)))
        self.sandbox.delete_snapshot(snapshot_id)
        del self.snapshots[snapshot_id]
        with pytest.raises(SnapshotNotFoundError):
            self.sandbox.restore_snapshot(snapshot_id)

    @_needs(Feature.LIFECYCLE_TERMINATE_WAKE)
    @rule(data=st.data())
    @checks("op:terminate", "op:wake_up")
    def terminate_and_wake_up(self, data: st.DataObject) -> None:
        snapshot_id = data.draw(st.sampled_from([None, *self.snapshots]))
        self.sandbox.terminate()
        self.sandbox.wake_up(snapshot_id)
        if snapshot_id is not None:
            self.model = self.snapshots[snapshot_id].copy()
        if self.target.supports(Feature.FILES):
            self.assert_tree_matches()
            self.assert_contents_match()

    @precondition(lambda self: any(not self.target.supports(f) for f in SANDBOX_PROBES))
    @rule(data=st.data())
    def unsupported_feature_raises(self, data: st.DataObject) -> None:
        feature = data.draw(st.sampled_from([f for f in SANDBOX_PROBES if not self.target.supports(f)]))
        with pytest.raises(CapabilityError) as info:
            SANDBOX_PROBES[feature](self.sandbox)
        assert (info.value.feature, info.value.provider) == (feature.value, self.target.name)


# the features the machine exercises: by its rules where supported, by its CapabilityError rule where not
@pytest.mark.covers(*SANDBOX_PROBES)
def test_sandbox_behaves_like_its_model(conformance: ConformanceTarget) -> None:
    machine = type("SandboxMachine", (SandboxMachine,), {"target": conformance})
    run_state_machine_as_test(machine, settings=conformance.hypothesis_settings())
