"""The local provider: commands run as host processes, isolated by namespaces where bubblewrap works.

provider_config:
  isolation   "namespaces" (default where bwrap works; grainchain/providers/local/_isolation.py) or "none" (plain host
              processes in a private workspace directory: not an isolation boundary)
  network     "host" (default) or "none" (a network namespace with only loopback; needs namespaces)
  pids_limit  most processes at once (default: none; see DEFAULT_PIDS_LIMIT)

Every sandbox has a scrubbed environment, whole-tree kills on timeout and close, file operations confined
to the workspace, limits in a cgroup (grainchain/providers/local/_cgroups.py) and filesystem snapshots that outlive the
process. With namespaces, commands see the workspace at /workspace and file operations take the same
paths. Blocking disk work lives in grainchain/providers/local/_localfs.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from grainchain import _ownership as ownership
from grainchain import _tree
from grainchain._acompat import arun_blocking, arun_in, arun_to_end
from grainchain._async.adapter import AsyncSandboxAdapter
from grainchain._async.backend import AsyncBackend
from grainchain._commands import EXEC_MARKER, SANDBOX_MARKER
from grainchain._generated.features import Feature
from grainchain._provider_config import ProviderConfig
from grainchain._types import LocalPath, ResourceBounds, parse_byte_size
from grainchain.errors import (
    CapabilityError,
    ConfigurationError,
    InvalidArgumentError,
    ProviderError,
    ProviderUnavailableError,
)
from grainchain.models import (
    FileInfo,
    SandboxConfig,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotKind,
)
from grainchain.providers.local import _cgroups as cg
from grainchain.providers.local import _confined as confined
from grainchain.providers.local import _criu as criu
from grainchain.providers.local import _disk as disk
from grainchain.providers.local import _isolation as iso
from grainchain.providers.local import _layers as layers
from grainchain.providers.local import _localfs as fs
from grainchain.providers.local import _ports as ports
from grainchain.providers.local import _python as python
from grainchain.providers.local._async.hostexec import HostRun
from grainchain.providers.local._hostproc import (
    STATE_MARKER,
    HostProcess,
    continue_all,
    kill_marked,
    marked_pids,
    process_state,
    scrubbed_environment,
    spawn,
    state_tag,
    stop_all,
)
from grainchain.providers.local._spawner import Spawner, SpawnerSlot
from grainchain.settings import Settings

SNAPSHOT_MODES = ("layers", "copy")
# A fork bomb must not exhaust the host's pids: every sandbox gets a pids cgroup where cgroups are writable
# (commands start in it for free: grainchain/providers/local/_spawner.py); provider_config pids_limit=None turns it off.
# Where there are no cgroups only an explicit pids_limit applies (as RLIMIT_NPROC, which counts the user's
# every process: no default).
DEFAULT_PIDS_LIMIT = 4096


MIN_MEMORY = 6 * 2**20  # SandboxConfig.memory_limit's floor (resource_bounds says why)


def _given(options: ProviderConfig) -> dict[str, Any]:
    """The provider_config keys given (in the SandboxConfig or the config file's [providers.local]), as
    LocalConfig checked them when the Sandbox was made; an unset key and a None differ for some."""
    return options.model_dump(include=set(options.model_fields_set))


def _options(given: Mapping[str, Any]) -> iso.Options:
    """The options of provider_config. Blocking the first time (cgroup and namespace probes: a bwrap run,
    the seccomp filter's compilation)."""
    default = DEFAULT_PIDS_LIMIT if cg.unavailable(cg.Limits(pids=DEFAULT_PIDS_LIMIT)) is None else None
    return iso.parse_options(given, default)


def _missing_features(given: Mapping[str, Any]) -> dict[Feature, str]:
    """What AsyncLocalAdapter.missing_features says; blocking (probes, cached after the first time)."""
    try:
        options = _options(given)
    except ConfigurationError:
        return {}  # create() reports it
    missing: dict[Feature, str] = {}
    if options.isolation == "none":
        why = iso.namespaces_unavailable() or "provider_config isolation is 'none'"
        missing[Feature.NETWORK_POLICY] = f"no network namespace without isolation ({why})"
    if cpu := cg.unavailable(cg.Limits(cpu=1.0)):
        missing[Feature.LIMITS_CPU] = f"{cpu}; no rlimit can cap CPU rate"
    if shutil.which("prlimit") is None and (memory := cg.unavailable(cg.Limits(memory=1 << 30))):
        missing[Feature.LIMITS_MEMORY] = f"{memory}, and no prlimit for the rlimit fallback"
    if options.network == "none" and (reason := ports.unavailable()):
        missing[Feature.PORTS] = reason
    if options.isolation == "none":
        missing[Feature.SNAPSHOT_MEMORY] = "memory snapshots need isolation 'namespaces' (a pid namespace)"
    elif reason := criu.unavailable():
        missing[Feature.SNAPSHOT_MEMORY] = reason
    return missing


def _snapshot_mode(given: Mapping[str, Any], settings: Settings) -> str:
    """provider_config snapshots: "layers" (overlayfs, default where it works) or "copy"."""
    mode = given.get("snapshots")
    if mode is not None and mode not in SNAPSHOT_MODES:
        raise ConfigurationError(
            f"provider_config 'snapshots' of local must be one of {', '.join(map(repr, SNAPSHOT_MODES))}, "
            f"not {mode!r}",
            provider="local",
        )
    reason = layers.overlay_unavailable(settings.state_dir.resolve())
    if mode == "layers" and reason:
        raise ProviderUnavailableError(f"snapshots 'layers' are not available: {reason}", provider="local")
    return str(mode or ("copy" if reason else "layers"))


def _disk_limit(given: Mapping[str, Any], settings: Settings) -> int | None:
    """provider_config disk_limit: a size (default disk.DEFAULT_LIMIT where a disk can be made, i.e. as
    root with loop devices), or None for no quota (snapshots of an idle sandbox are then faster: its
    upper layer is renamed into a layer instead of copied)."""
    state = settings.state_dir.resolve()
    if "disk_limit" not in given:
        return disk.DEFAULT_LIMIT if disk.unavailable(state) is None else None
    value = given["disk_limit"]
    if value is None:
        return None
    try:
        size = parse_byte_size(value)
    except ValueError as exc:
        raise ConfigurationError(f"provider_config 'disk_limit' of local: {exc}", provider="local") from None
    if size < disk.MIN_LIMIT:
        raise ConfigurationError(
            f"provider_config 'disk_limit' of local must be at least {disk.MIN_LIMIT // 2**20} MiB "
            f"(the filesystem's own metadata), not {value!r}",
            provider="local",
        )
    if reason := disk.unavailable(state):
        raise ProviderUnavailableError(
            f"provider_config 'disk_limit' cannot be enforced here: {reason} (set it to None to run "
            "without a disk quota)",
            provider="local",
        )
    return size


def _mount_first_stack(state_dir: Path, box: fs.SandboxDir, stack: layers.Stack) -> None:
    """A new sandbox's workspace: the base layer (made once per state dir) under an empty upper layer."""
    state = state_dir.resolve()
    layers.base_layer(state)
    layers.mount_stack(state, box.data, box.workspace, stack)


def _snapshot_fields(settings: Settings) -> dict[str, Any]:
    """What a snapshot records besides its SnapshotInfo: its namespace and expiry (grainchain/_ownership.py)."""
    expires = ownership.expiry(settings)
    return {
        "namespace": ownership.namespace_of(settings),
        "expires_at": None if expires is None else expires.isoformat(),
    }


def _limits(config: SandboxConfig, options: iso.Options) -> cg.Limits:
    memory = None if config.memory_limit is None else int(config.memory_limit)
    return cg.Limits(memory=memory, cpu=config.cpu_limit, pids=options.pids_limit, cpu_group=True)


def _kill_abandoned(child: HostProcess) -> None:
    """A command that started after its caller stopped waiting (a cancelled execute): nobody will read it."""
    child.kill_tree()
    child.close()


T = TypeVar("T")


def _restarted() -> ProviderError:
    return ProviderError(
        "the sandbox's processes were restarted during the file operation (a restore or terminate in "
        "another thread); try again",
        provider="local",
        retryable=True,
    )


_MATERIALIZING = ".materializing-"  # beside a workspace: its plain copy while a kept close makes it
_FROZEN = "frozen"  # in a sandbox's directory while its processes are stopped for a snapshot


def _sandbox_pid(host_pid: int) -> int:
    """The pid an isolated sandbox's commands know a command by (nsenter forks it into the pid namespace)."""
    inner = iso.joined_child(host_pid)
    return (inner and iso.in_sandbox_pid(inner)) or host_pid


class AsyncLocalAdapter(AsyncSandboxAdapter):
    provider_name = "local"

    def __init__(
        self,
        box: fs.SandboxDir,
        config: SandboxConfig,
        settings: Settings,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        """An adapter for a sandbox whose directory exists; `runtime` is what create() decided (isolation,
        cgroup, launcher, layers, holder), as saved in its meta.json (read from there when not given)."""
        super().__init__(box.sandbox_id, config, settings)
        runtime = box.runtime() if runtime is None else runtime
        self._box = box
        box.snapshot_fields = functools.partial(_snapshot_fields, settings)
        self._state_dir = settings.state_dir.resolve()
        self._python = python.store()  # python, pip: grainchain/providers/local/_python.py
        self._options = iso.Options(**runtime["options"])
        self._isolated = self._options.isolation == "namespaces"
        self._cgroup = cg.SandboxCgroup.from_stored(runtime["cgroup"]) if runtime.get("cgroup") else None
        self._launcher: list[str] = list(runtime.get("launcher", []))  # cgroup placement or rlimits
        self._stack = layers.Stack.from_stored(runtime["stack"]) if runtime.get("stack") else None
        self._holder = iso.Holder(**runtime["holder"]) if runtime.get("holder") else None
        self._roots = iso.RootSlot()  # the holder's root, for file operations
        self._spawner = SpawnerSlot()  # the thread commands start from: started with the first command
        self._forwards = ports.Forwards(self._network_namespace)  # network "none": relays to its ports
        # the workspace as commands see it; file operations take and show paths in this view
        self._view_root = iso.WORKSPACE if self._isolated else str(box.workspace)
        self._cwd = self._view_of(self._working_directory(config.working_directory))

    def _working_directory(self, working_dir: str | None) -> Path:
        """The host directory commands start in by default."""
        host, _ = confined.resolve(self._view(), self._view_root, working_dir or ".")
        return host

    def _view_of(self, host: Path) -> str:
        rel = host.relative_to(self._box.workspace)
        return self._view_root if rel == Path(".") else f"{self._view_root.rstrip('/')}/{rel}"

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    async def missing_features(
        cls, backend: AsyncBackend, config: SandboxConfig, provider_options: ProviderConfig
    ) -> Mapping[Feature, str]:
        return await arun_blocking(_missing_features, _given(provider_options))

    @classmethod
    async def resource_bounds(
        cls, backend: AsyncBackend, config: SandboxConfig, provider_options: ProviderConfig
    ) -> ResourceBounds:
        cpus, why = (None, "") if config.cpu_limit is None else await arun_blocking(cg.machine_cpus)  # 0.6 ms
        return ResourceBounds(
            min_memory=MIN_MEMORY,
            min_memory_why="the sandbox's own shell and namespace holder need it (below 4 MiB the OOM killer "
            "ends them before any command runs; docker's engine asks for 6 MiB too)",
            max_cpus=cpus,
            max_cpus_why=f"a cap above what the machine has caps nothing ({why})",
        )

    @classmethod
    async def create(
        cls, backend: AsyncBackend, config: SandboxConfig, provider_options: ProviderConfig
    ) -> Self:
        settings = backend.settings
        given = _given(provider_options)
        options = await arun_blocking(_options, given)
        if options.network == "none" and options.isolation == "none":
            raise CapabilityError(
                Feature.NETWORK_POLICY.value,
                cls.provider_name,
                operation="create",
                hint="provider_config network 'none' needs isolation 'namespaces'",
            )
        options = dataclasses.replace(
            options,
            snapshots=await arun_blocking(_snapshot_mode, given, settings),
            disk_limit=await arun_blocking(_disk_limit, given, settings),
        )
        box = await arun_blocking(fs.SandboxDir.create, settings.state_dir, config, options.disk_limit)
        cgroup: cg.SandboxCgroup | None = None
        try:
            cgroup, launcher = await arun_blocking(cls._make_limits, box.sandbox_id, _limits(config, options))
            runtime: dict[str, Any] = {
                "options": options.stored(),
                "cgroup": None if cgroup is None else cgroup.stored(),
                "launcher": launcher,
            }
            if options.snapshots == "layers":
                stack = layers.Stack([layers.BASE])
                runtime["stack"] = stack.stored()
                await arun_blocking(_mount_first_stack, settings.state_dir, box, stack)
            await arun_blocking(box.save, SandboxStatus.running, config, None, runtime)
            adapter = await arun_blocking(cls, box, config, settings, runtime)  # it resolves paths
            await arun_blocking(adapter._make_cwd)
            if adapter._isolated:
                await arun_blocking(adapter._start_holder)
                await arun_blocking(adapter._save)  # connect() joins this holder, not a second one
        except BaseException:
            if cgroup is not None:
                await arun_blocking(cgroup.remove)
            await arun_blocking(kill_marked, f"{SANDBOX_MARKER}={box.sandbox_id}")
            await arun_blocking(box.remove)
            raise
        return adapter

    @staticmethod
    def _make_limits(sandbox_id: str, limits: cg.Limits) -> tuple[cg.SandboxCgroup | None, list[str]]:
        if limits.cpu_group and limits.cpu is None and cg.unavailable(limits) is not None:
            limits = dataclasses.replace(limits, cpu_group=False)  # the grouping is a bonus, not a must
        if not limits.controllers():
            return None, []
        if cg.unavailable(limits) is None:
            group = cg.SandboxCgroup.create(sandbox_id, limits)
            return group, group.launcher()
        return None, cg.rlimit_launcher(limits)

    def _runtime(self) -> dict[str, Any]:
        holder = self._holder
        return {
            "options": self._options.stored(),
            "cgroup": None if self._cgroup is None else self._cgroup.stored(),
            "launcher": self._launcher,
            "stack": None if self._stack is None else self._stack.stored(),
            "holder": None if holder is None else dataclasses.asdict(holder),
        }

    def _save(self, status: SandboxStatus = SandboxStatus.running) -> None:
        self._box.save(status, self.config, None, self._runtime())

    @classmethod
    async def connect(
        cls, backend: AsyncBackend, sandbox_id: str, config: SandboxConfig, options: ProviderConfig
    ) -> Self:
        settings = backend.settings
        box = await arun_blocking(fs.SandboxDir.open, settings.state_dir, sandbox_id)
        stored = await arun_blocking(box.config)
        runtime = await arun_blocking(box.runtime)
        if "options" not in runtime:  # made before isolation existed: a plain host sandbox
            runtime = {"options": iso.Options("none", "host", None).stored()}
        group = runtime.get("cgroup")
        if group and not await arun_blocking(cg.SandboxCgroup.from_stored(group).exists):  # closed, a reboot
            limits = _limits(stored, iso.Options(**runtime["options"]))
            cgroup, launcher = await arun_blocking(cls._make_limits, box.sandbox_id, limits)
            runtime |= {"cgroup": None if cgroup is None else cgroup.stored(), "launcher": launcher}
        adapter = await arun_blocking(cls, box, stored, settings, runtime)  # it resolves paths
        await arun_blocking(adapter._thaw)  # its last client was killed while it had them stopped
        await arun_blocking(box.mount_disk)  # mounts do not survive a reboot
        if adapter._stack is None:
            await arun_blocking(box.recover)  # a restore its last owner did not finish (crash)
        else:  # mounts do not survive a reboot
            await arun_blocking(adapter._mount_stack)
        await arun_blocking(adapter._save)
        return adapter

    @classmethod
    async def list_sandboxes(cls, backend: AsyncBackend) -> list[SandboxInfo]:
        found = await arun_blocking(fs.list_sandboxes, backend.settings.state_dir)
        return [i.model_copy(update={"provider": cls.provider_name}) for i in found]  # (a subclass's name)

    async def aclose(self) -> None:
        await arun_to_end(self._forwards.close)
        await self._kill_all()
        await arun_to_end(self._stop_spawner)  # its thread must leave the cgroup before the cgroup can go
        if self._cgroup is not None:
            await arun_blocking(self._cgroup.remove)
        if self.config.auto_cleanup:
            await arun_blocking(self._box.remove)
            if self._stack is not None:
                await arun_blocking(self._collect_garbage)  # layers only this sandbox used
        else:
            if self._stack is not None:
                await arun_blocking(self._materialize)
            await arun_blocking(self._save, SandboxStatus.closed)
            await arun_blocking(self._box.unmount_disk)  # no mount left behind; connect() mounts it again
        self.status = SandboxStatus.closed

    async def detach(self) -> None:
        await arun_to_end(self._forwards.close)  # the relays are this client's threads
        await arun_to_end(self._stop_spawner)
        self._release_root()  # the holder runs on; our descriptors of its root go
        await super().detach()
        # nobody owns it now: `grainchain cleanup` leaves it alone (connect() takes it again)
        await arun_blocking(
            lambda: self._box.save(self.status, self.config, None, self._runtime(), owned=False)
        )

    def _materialize(self) -> None:
        """Turn a layered workspace into a plain directory (a closed, kept sandbox leaves no mount behind);
        the sandbox takes copy snapshots from then on."""
        assert self._stack is not None
        state, box, stack = self._state_dir, self._box, self._stack
        # The plain copy is made beside the workspace, renamed onto it (an empty mount point) and saved;
        # only then does the upper layer go. A client killed at any point leaves the layered workspace
        # (connect drops a copy the meta does not name yet: _mount_stack) or the plain one.
        plain = box.workspace.parent / f"{_MATERIALIZING}{uuid.uuid4().hex}"
        with layers.locked(state):
            layers.unmount(box.workspace)
            lowers = [layers.copy_upper(state, box.data, stack), *stack.lowers]
            try:
                with layers.merged_view(state, lowers) as merged:
                    layers.copy_into_new(merged, plain)
                plain.rename(box.workspace)
            except BaseException:
                fs.remove_tree(plain)
                raise
            self._stack = None
            self._options = dataclasses.replace(self._options, snapshots="copy")
            self._save(SandboxStatus.closed)
            layers.drop_upper(box.data, stack)
            layers.collect_garbage(state)

    async def _kill_all(self) -> None:
        """Kill every process of the sandbox, the holder of its namespaces included, and wait until they
        are gone (a remount of the workspace must not leave one behind on the old mount)."""
        await self._handles.kill_all()
        # processes a command left behind (`sleep 100 &`, daemons) carry the sandbox marker, as does the holder;
        # isolated, killing pid 1 ends the whole pid namespace (also processes a memory snapshot restored,
        # whose marker may name the sandbox they were captured in)
        if self._holder is not None:  # the pid namespace goes with its pid 1: left to kill is what is outside
            await arun_blocking(self._holder.kill)
            await arun_blocking(self._holder.wait_gone)
        if self._cgroup is not None:  # every process of the sandbox is in it: no scan of the host's
            await arun_blocking(self._cgroup.kill_all)
        else:
            await arun_blocking(kill_marked, f"{SANDBOX_MARKER}={self.sandbox_id}")
        self._holder = None
        self._release_root()

    def _collect_garbage(self) -> None:
        with layers.locked(self._state_dir):
            layers.collect_garbage(self._state_dir)

    def _mount_stack(self) -> None:
        """Mount the workspace (connect: after a reboot, or a client killed mid-snapshot or mid-restore,
        whose unfinished move into layers/ is finished first and whose leftover upper layers go)."""
        assert self._stack is not None
        state, box = self._state_dir, self._box
        if layers.is_mounted(box.workspace):
            return
        with layers.locked(state):
            self._stack = self._stack.recover(state, box.data)
            for stray in box.workspace.parent.glob(
                f"{_MATERIALIZING}*"
            ):  # a kept close, killed (_materialize)
                fs.remove_tree(stray)
            if any(
                box.workspace.iterdir()
            ):  # its plain copy, renamed in but not saved: the layers still rule
                fs.remove_tree(box.workspace)
                box.workspace.mkdir(mode=0o700)
            layers.mount_stack(state, box.data, box.workspace, self._stack)

    # -- namespaces -----------------------------------------------------------------------------------

    def _holder_env(self) -> dict[str, str]:
        return scrubbed_environment(self._markers())

    def _markers(self) -> dict[str, str]:
        return {SANDBOX_MARKER: self.sandbox_id, STATE_MARKER: state_tag(self._state_dir)}

    def _start_holder(self) -> None:
        self._holder = iso.start_holder(
            self._box.workspace,
            self._box.tmp,
            self._box.root / "holder.log",
            network=self._options.network,
            env=self._holder_env(),
            launcher=self._launcher,
            rootfs=self._box.rootfs,
            ro_binds=self._python.binds,
        )

    def _ensure_holder(self) -> iso.Holder:
        """The holder, started again when it is gone (a restore, a command that killed every process of the
        sandbox, a reboot since the sandbox was kept)."""
        holder = self._holder
        if holder is not None and holder.alive() and not os.path.exists(holder.dev_null()):
            # dying: killed by a client (a restore, a snapshot) that was killed itself before it saved
            # that; its pid namespace is still being torn down (its root is gone already)
            holder.kill()
            holder.wait_gone()
            self._holder = None
            self._release_root()
        if self._holder is None or not self._holder.alive():
            self._start_holder()
            self._box.save(SandboxStatus.running, self.config, None, self._runtime())
        assert self._holder is not None
        return self._holder

    # -- paths ----------------------------------------------------------------------------------------

    # The sandbox's working directory lies in the workspace (_view); a call's working_dir and file
    # operations reach what commands reach
    # (_sandbox_view: isolated, the holder's root, its mounts included; else the host's `/`). Both act
    # through descriptors walked from the view's root (grainchain/providers/local/_confined.py), never
    # through a host path: a command may swap a directory for a symlink at any moment.

    def _view(self) -> confined.View:
        return confined.View(self._box.workspace, self._view_root)

    def _sandbox_view(self) -> tuple[confined.View, iso.HolderRoot | None]:
        """The whole filesystem the sandbox's commands see, and the holder's root it is walked from (None:
        not isolated, the host's `/`). Blocking: starts the holder when none runs."""
        if not self._isolated:
            return confined.View(Path("/"), "/"), None
        try:
            root = self._roots.get(lambda: self._holder, self._ensure_holder, self._box.workspace)
        except (ProcessLookupError, FileNotFoundError) as exc:
            raise _restarted() from exc
        return confined.View(Path(f"/proc/{root.holder.target}/root"), "/", self._opener(root)), root

    @staticmethod
    def _opener(root: iso.HolderRoot) -> Callable[[], int]:
        def open_root() -> int:
            try:
                return root.open()
            except ProcessLookupError:
                raise _restarted() from None

        return open_root

    def _release_root(self) -> None:
        """Close the descriptors of the holder's root: once the holder ended they would pin its mounts."""
        self._roots.release()

    def _on_files(self, operation: Callable[[confined.View, str], T]) -> T:
        """Run a file operation (blocking) in the sandbox's view. When the holder ended meanwhile (a restore
        or terminate in another thread: its mounts went with it), the answer may come from the remains:
        a retryable error instead."""
        view, root = self._sandbox_view()
        result = operation(view, self._cwd)
        if root is not None and not root.alive():
            raise _restarted()
        return result

    def _make_cwd(self) -> None:
        confined.make_directory(self._view(), self._cwd, self._cwd)

    # -- commands -------------------------------------------------------------------------------------

    def _spawn(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        stdin: bool = False,
    ) -> HostProcess:
        # FileNotFoundInSandboxError also for a working directory deleted since the sandbox started
        if working_dir is None:
            host_cwd, cwd = confined.directory(self._view(), self._cwd, self._cwd)
        else:  # wherever `cd` from the working directory would go: the sandbox's whole view, as files
            host_cwd, cwd = self._on_files(lambda view, start: confined.directory(view, start, working_dir))
        home, tmp = (
            (iso.WORKSPACE, iso.SANDBOX_TMP) if self._isolated else (self._view_root, str(self._box.tmp))
        )
        env = scrubbed_environment(
            {"HOME": home, "TMPDIR": tmp},
            self._python.environment(self._isolated, home, self.config.environment_vars, environment or {}),
            self.config.environment_vars,
            environment or {},
            self._markers(),
        )
        marker = (EXEC_MARKER, uuid.uuid4().hex)
        # the spawner thread already holds its children in the pids cgroup: a launcher only for the rest
        launcher = self._launcher if self._cgroup is None else self._cgroup.launcher(besides_thread=True)
        try:
            child = self._spawn_in(command, host_cwd, cwd, env, marker, launcher, stdin)
        except BlockingIOError:  # EAGAIN: the spawner thread is in the sandbox's pids cgroup
            raise ProviderError(
                f"cannot start the command: the sandbox runs as many processes as it may "
                f"(provider_config pids_limit {self._options.pids_limit}); kill some, or raise the limit",
                provider="local",
                retryable=True,
            ) from None
        child.candidates = None if self._cgroup is None else self._cgroup.pids  # kills look there only
        return child

    def _spawn_in(
        self,
        command: str,
        host_cwd: Path,
        cwd: str,
        env: dict[str, str],
        marker: tuple[str, str],
        launcher: list[str],
        stdin: bool = False,
    ) -> HostProcess:
        if not self._isolated:
            return spawn(command, cwd=host_cwd, env=env, marker=marker, prefix=launcher, stdin_pipe=stdin)
        holder = self._holder
        if holder is None:  # ended meanwhile (a restore, terminate): _start_command starts it again
            raise ProviderError(
                "the sandbox's processes were stopped while the command started (restore or terminate "
                "in another thread); try again",
                provider="local",
                retryable=True,
            )
        prefix = [*launcher, *holder.enter_argv(cwd)]
        # without stdin the command reads the sandbox's own /dev/null, not the host's
        child = spawn(
            command,
            cwd=Path("/"),
            env=env,
            marker=marker,
            prefix=prefix,
            stdin=holder.dev_null(),
            stdin_pipe=stdin,
        )
        child.reaps_its_child = True
        return child

    async def _start_command(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        stdin: bool = False,
    ) -> HostProcess:
        """Start a command on the sandbox's spawner thread (its seccomp filter and pids cgroup are then the
        command's from the start); the holder is started first, on an ordinary thread (bwrap mounts)."""
        if self._isolated:
            await arun_blocking(self._ensure_holder)
        spawner = self._spawner.current
        if spawner is None:  # the first command: the thread starts off the event loop
            spawner = await arun_blocking(self._spawner_thread)
        start = functools.partial(self._spawn, command, working_dir, environment, stdin)
        return await arun_in(spawner, start, abandoned=_kill_abandoned)

    def _spawner_thread(self) -> Spawner:
        """The sandbox's spawner, started on first use (blocking: the thread starts, joins the cgroup and
        installs its seccomp filter before it is ready)."""
        cgroup = self._cgroup
        return self._spawner.start(lambda: [] if cgroup is None else cgroup.thread_tasks(), self._isolated)

    def _stop_spawner(self) -> None:
        """Blocking: waits until the spawner's thread has ended (and left the sandbox's cgroup)."""
        self._spawner.stop()

    async def _launch(
        self,
        command: str,
        working_dir: str | None,
        environment: dict[str, str] | None,
        deadline: float | None,
        *,
        stdin: bool = False,
    ) -> HostRun:
        child = await self._start_command(command, working_dir, environment, stdin)
        return HostRun(child, _sandbox_pid if self._isolated else None)

    async def _oom_baseline(self) -> int | None:
        if self._cgroup is None or self.config.memory_limit is None:
            return None
        return await arun_blocking(self._cgroup.oom_kills)

    async def _oom_killed_since(self, baseline: int) -> bool:
        return await arun_blocking(self._oom_kills) > baseline

    def _oom_kills(self) -> int:
        if self._cgroup is None or self.config.memory_limit is None:
            return 0
        return self._cgroup.oom_kills()

    # -- files ----------------------------------------------------------------------------------------

    # _on_files may start the holder: it runs in the worker thread, never on the loop

    async def upload_file(self, path: str, content: str | bytes, mode: str = "w") -> None:
        data = self.content_bytes(content)
        append = mode.startswith("a")
        write = functools.partial(confined.write_file, path=path, data=data, append=append)
        await arun_blocking(self._on_files, write)

    async def download_file(self, path: str) -> bytes:
        return await arun_blocking(self._on_files, functools.partial(confined.read_file, path=path))

    async def list_files(self, path: str = ".") -> list[FileInfo]:
        return await arun_blocking(self._on_files, functools.partial(confined.list_directory, path=path))

    # These act on a symlink itself, not on what it points to (its target is never touched).

    async def get_file_info(self, path: str) -> FileInfo:
        return await arun_blocking(self._on_files, functools.partial(confined.file_info, path=path))

    async def file_exists(self, path: str) -> bool:
        return await arun_blocking(self._on_files, functools.partial(confined.exists, path=path))

    async def delete_file(self, path: str) -> None:
        shown = posixpath.normpath(posixpath.join(self._cwd, path))
        if shown in (self._view_root, self._cwd):  # (`/` is refused by confined.delete)
            raise InvalidArgumentError(
                f"refusing to delete {shown}: it is the sandbox's workspace or working directory",
                argument="path",
                provider="local",
            )
        await arun_blocking(self._on_files, functools.partial(confined.delete, path=path))

    async def make_directory(self, path: str) -> None:
        await arun_blocking(self._on_files, functools.partial(confined.make_directory, path=path))

    # Directories: a tar made and unpacked by descriptors on both sides (grainchain/_tree.py), in one
    # worker thread: memory stays at a piece of the stream whatever the tree's size.

    async def upload_directory(self, local_path: LocalPath, sandbox_path: str) -> None:
        source = await arun_blocking(_tree.local_source, local_path, "upload_directory")
        try:
            progress = _tree.Progress(f"upload_directory {sandbox_path}")

            def fill(fd: int) -> None:
                _tree.unpack_at(
                    fd, _tree.ChunkReader(_tree.pack(source, progress=progress)), "upload_directory"
                )

            await arun_blocking(
                self._on_files, functools.partial(confined.fill_directory, path=sandbox_path, fill=fill)
            )
            progress.done()
        finally:
            os.close(source)

    async def download_directory(self, sandbox_path: str, local_path: LocalPath) -> None:
        target = await arun_blocking(_tree.local_target, local_path, "download_directory")
        progress = _tree.Progress(f"download_directory {sandbox_path}")

        def copy(fd: int) -> None:
            _tree.extract(
                _tree.ChunkReader(_tree.pack(fd, progress=progress, sandbox=True)),
                target,
                "download_directory",
            )

        await arun_blocking(
            self._on_files, functools.partial(confined.with_directory, path=sandbox_path, use=copy)
        )
        progress.done()

    # -- snapshots ------------------------------------------------------------------------------------

    def _busy(self) -> bool:
        """Whether a process of the sandbox other than the namespace holder runs (it may hold files of the
        workspace open: the workspace cannot be remounted under it). Processes a memory snapshot brought
        back may carry another sandbox's marker: they are found as pid 1's descendants."""
        holder = set() if self._holder is None else set(self._holder.pids())
        inside = (
            set() if self._holder is None or not self._holder.alive() else set(criu.tree(self._holder.pid))
        )
        marked = (
            marked_pids(f"{SANDBOX_MARKER}={self.sandbox_id}")
            if self._cgroup is None
            else self._cgroup.pids()
        )
        return any(pid not in holder for pid in [*marked, *inside])

    def _sandbox_pids(self) -> list[int]:
        """Every process of the sandbox (the holder's and what a memory snapshot brought back included)."""
        holder = self._holder
        inside = criu.tree(holder.pid) if holder is not None and holder.alive() else []
        marked = (
            marked_pids(f"{SANDBOX_MARKER}={self.sandbox_id}")
            if self._cgroup is None
            else self._cgroup.pids()
        )
        return sorted({*marked, *inside})

    async def _running_processes(self) -> list[str]:
        return await arun_blocking(self._describe_running)

    def _describe_running(self) -> list[str]:
        """The sandbox's processes but the holder's and grainchain's own nsenter (the way in of a command),
        by the pid commands know them by."""
        holder = set() if self._holder is None else set(self._holder.pids())
        found = []
        for pid in self._sandbox_pids():
            if pid in holder or process_state(pid) in ("Z", "X", ""):
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [os.fsdecode(a) for a in f.read().split(b"\0") if a]
            except OSError:  # ended meanwhile
                continue
            if self._isolated and argv[:1] == ["nsenter"]:
                continue
            shown = (iso.in_sandbox_pid(pid) or pid) if self._isolated else pid
            found.append(f"pid {shown}: {' '.join(argv) or '?'}")
        return found

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """The sandbox's processes stopped (SIGSTOP, round after round until none is new: see
        _hostproc.stop_all) while a live tree is copied, so that a snapshot of a busy sandbox is one
        moment's state, and continued after (not those that were stopped already). A marker file says so
        meanwhile: a client killed in between leaves it, and connect() continues them (_thaw)."""
        marker = self._box.root / _FROZEN
        marker.write_text(str(os.getpid()))
        before: set[int] = set()
        seen: set[int] = set()

        def find() -> list[int]:
            pids = self._sandbox_pids()
            for pid in pids:
                if pid not in seen:
                    seen.add(pid)
                    if process_state(pid) in ("T", "t"):
                        before.add(pid)
            return pids

        held: set[int] = set()
        try:
            held = stop_all(find)
            yield
        finally:
            continue_all(held - before)
            marker.unlink(missing_ok=True)

    def _thaw(self) -> None:
        """Continue the processes that a client killed while it had them stopped (see _frozen)."""
        marker = self._box.root / _FROZEN
        if marker.exists():
            continue_all(self._sandbox_pids())
            marker.unlink(missing_ok=True)

    def _copy_snapshot(self) -> str:
        with self._frozen():
            return fs.create_snapshot(self._state_dir, self._box).snapshot_id

    async def create_snapshot(self, kind: SnapshotKind = SnapshotKind.filesystem) -> str:
        if kind is SnapshotKind.memory:
            return await arun_blocking(self._memory_snapshot)
        if self._stack is None:
            return await arun_blocking(self._copy_snapshot)
        # with a disk the upper layer lives on another filesystem than the layers: copied, never renamed
        if self._options.disk_limit is not None or await arun_blocking(self._busy):
            return await arun_blocking(self._snapshot_busy_layers)
        # idle: freeze the upper layer in place of copying it; the holder's mount namespace goes with it
        await self._kill_all()
        return await arun_blocking(self._snapshot_by_freezing)

    def _snapshot_by_freezing(self) -> str:
        assert self._stack is not None
        state, box = self._state_dir, self._box
        with layers.locked(state):
            if layers.unchanged(box.data, self._stack, state):  # nothing new: the same layers again
                lowers = self._stack.lowers
                return fs.create_layered_snapshot(
                    state, box, lowers, layers.stack_size(state, lowers)
                ).snapshot_id
            layers.unmount(box.workspace)
            old, layer_id = self._stack, layers.new_layer_id()
            # The intent first: from this save on, a client killed before the upper layer is renamed into
            # layers/ leaves a meta naming the new stack and the move still owed (connect() finishes it)
            self._stack = layers.Stack([layer_id, *old.lowers], pending=(old.upper, layer_id))
            self._save()
            layers.adopt(state, box.data, old.upper, layer_id)
            stack = layers.Stack(self._stack.lowers, self._stack.upper)
            if len(stack.lowers) > layers.MAX_DEPTH:
                stack = layers.Stack([layers.flatten(state, stack.lowers)], stack.upper)
            self._stack = stack
            self._save()
            info = fs.create_layered_snapshot(
                state, box, stack.lowers, layers.stack_size(state, stack.lowers)
            )
            layers.mount_stack(state, box.data, box.workspace, stack)
        return info.snapshot_id

    def _snapshot_busy_layers(self) -> str:
        assert self._stack is not None
        state, box = self._state_dir, self._box
        with layers.locked(state):
            with self._frozen():  # only what changed since the last freeze is copied: a short stop
                layer_id = layers.copy_upper(state, box.data, self._stack)
            lowers = [layer_id, *self._stack.lowers]
            if len(lowers) > layers.MAX_DEPTH:
                lowers = [layers.flatten(state, lowers)]
            info = fs.create_layered_snapshot(state, box, lowers, layers.stack_size(state, lowers))
        return info.snapshot_id

    async def _restore_snapshot(self, snapshot_id: str) -> None:
        # An unknown id must fail before anything is touched (processes included).
        lowers = await arun_blocking(fs.snapshot_layers, self._state_dir, snapshot_id)
        info = await arun_blocking(fs.snapshot_info, self._state_dir, snapshot_id)
        memory = info.kind is SnapshotKind.memory
        if memory and (reason := await arun_blocking(self._no_memory_snapshots)):  # a CRIU probe
            raise CapabilityError(
                Feature.SNAPSHOT_MEMORY.value, self.provider_name, operation="restore_snapshot", hint=reason
            )
        # The filesystem comes back first, then (memory snapshot) the processes on it. What runs now goes: a
        # filesystem snapshot holds no processes; the holder too, its /workspace is bound to the old tree.
        await self._kill_all()
        if self._stack is None:
            await arun_blocking(fs.restore_snapshot, self._state_dir, self._box, snapshot_id)
        else:
            await arun_blocking(self._restore_layers, snapshot_id, lowers)
        await arun_blocking(self._make_cwd)
        if memory:
            await arun_blocking(self._restore_processes, snapshot_id)
        # else the holder starts again with the next command

    def _no_memory_snapshots(self) -> str | None:
        if not self._isolated:
            return "memory snapshots need isolation 'namespaces' (a pid namespace)"
        return criu.unavailable()

    def _memory_snapshot(self) -> str:
        """criu dump of the sandbox's process tree (left stopped meanwhile), then its files: a layer of what
        changed (or a copy), the sandbox's /tmp and its root's mount points; the tree then runs on."""
        if reason := self._no_memory_snapshots():
            raise CapabilityError(
                Feature.SNAPSHOT_MEMORY.value, self.provider_name, operation="create_snapshot", hint=reason
            )
        holder = self._ensure_holder()
        state, box = self._state_dir, self._box

        def fill(staging: Path) -> int:
            criu.dump(holder.pid, staging / "criu")
            try:
                if self._stack is None:
                    fs.copy_tree(box.workspace, staging / "tree")
                    size = layers.stack_size_of(staging / "tree")
                else:
                    with layers.locked(state):
                        lowers = [layers.copy_upper(state, box.data, self._stack), *self._stack.lowers]
                        if len(lowers) > layers.MAX_DEPTH:
                            lowers = [layers.flatten(state, lowers)]
                        layers.write_snapshot_layers(staging, lowers)
                        size = layers.stack_size(state, lowers)
                layers.copy_into_new(box.tmp, staging / "tmp")
                layers.copy_into_new(box.rootfs, staging / "rootfs")
                (staging / "memory.json").write_text(json.dumps({"network": holder.network}))
            finally:
                criu.resume(holder.pid)
            return size + layers.stack_size_of(staging / "criu")

        return fs.publish_snapshot(state, box, fill, SnapshotKind.memory).snapshot_id

    def _restore_processes(self, snapshot_id: str) -> None:
        """Bring a memory snapshot's processes back, on the files restore_snapshot just put in place."""
        source = fs.snapshot_path(self._state_dir, snapshot_id)
        box = self._box
        for name, target in (("tmp", box.tmp), ("rootfs", box.rootfs)):
            fs.remove_tree(target)
            layers.copy_into_new(source / name, target)
        network = json.loads((source / "memory.json").read_text())["network"]
        pid = criu.restore(source / "criu", box.rootfs, box.workspace, box.tmp)
        self._holder = iso.Holder(pid=pid, target=pid, network=network, userns=False)
        if self._cgroup is not None:
            self._cgroup.adopt(criu.tree(pid))
        self._save()

    async def terminate(self) -> None:
        """Stop every process (the holder too); files and snapshots stay for wake_up()."""
        await arun_to_end(self._forwards.close)
        await self._kill_all()
        self.status = SandboxStatus.terminated
        await arun_blocking(self._save, SandboxStatus.terminated)

    async def wake_up(self, snapshot_id: str | None = None) -> None:
        """Run again: from a snapshot when given (a memory snapshot brings its processes back), else on the
        files as they were; the holder starts with the next command."""
        if snapshot_id is not None:
            await self.restore_snapshot(snapshot_id)
        self.status = SandboxStatus.running
        await arun_blocking(self._save)

    def _restore_layers(self, snapshot_id: str, lowers: list[str] | None) -> None:
        assert self._stack is not None
        state, box = self._state_dir, self._box
        with layers.locked(state):
            if lowers is None:  # a copy snapshot (made without layers): its tree becomes a layer
                lowers = [layers.import_tree(state, fs.snapshot_tree(state, snapshot_id))]
            old, new = self._stack, layers.Stack(list(lowers))
            layers.unmount(box.workspace)
            self._stack = new
            self._save()  # from here on a crash leaves the new state, mounted again by connect()
            layers.mount_stack(state, box.data, box.workspace, new)
            layers.drop_upper(box.data, old)
            layers.collect_garbage(state)

    # -- ports --------------------------------------------------------------------------------------------

    async def port_address(self, port: int) -> str:
        if port not in (self.config.ports or []):
            raise InvalidArgumentError(
                f"port {port} is not in SandboxConfig.ports ({self.config.ports or []}); list the ports "
                "to reach when the sandbox is created",
                argument="port",
                provider=self.provider_name,
            )
        if self._options.network != "none":  # the sandbox shares the host's network
            return f"127.0.0.1:{port}"
        return await arun_blocking(self._forwards.address, port)

    def _network_namespace(self) -> str | None:
        """The sandbox's network namespace now (a restore starts a new holder), None without a holder."""
        holder = self._holder
        if holder is None or not holder.alive():
            return None
        return f"/proc/{holder.target}/ns/net"

    def _in_namespace(self, recorded: str | None) -> bool:
        return ownership.belongs(recorded, self.settings)

    async def list_snapshots(self) -> list[SnapshotInfo]:
        found = await arun_blocking(fs.list_snapshots, self._state_dir, self._in_namespace)
        return [i.model_copy(update={"provider": self.provider_name}) for i in found]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await arun_blocking(fs.delete_snapshot, self._state_dir, snapshot_id, self._in_namespace)
        await arun_blocking(self._collect_garbage)  # its layers, once nothing else uses them
