"""Bad input, table-driven, against every provider available offline (issue 14): each row is an operation with
bad arguments and what is due: a grainchain error of the expected class before anything runs, or a correct
result. An untyped error (any exception outside grainchain.errors), or a silent success where an error is
due, is counted; the count must be 0. After each row the sandbox must still work and nothing of the refused
call may have run. The last test prints a table per provider: rows, typed, untyped.

Providers: local (isolation "none" and "namespaces", both clients for "none"), docker (when an engine with the
test image answers), e2b and modal on their in-repo fakes, and the in-memory test provider.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import _reliability
import pytest
from _support import AwaitableSync

from grainchain import AsyncSandbox, SandboxConfig
from grainchain.errors import (
    CapabilityError,
    ConfigurationError,
    GrainchainError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    ProviderError,
    RemoteError,
    SandboxNotFoundError,
)
from grainchain.sync import Sandbox as SyncSandbox

pytestmark = pytest.mark.timeout(240)

DOCKER_IMAGE = "grainchain-test/busybox:latest"
BIG = "x" * (200 * 1024)  # over every limit on one argument string (Linux: 128 KiB)
LONG_NAME = "n" * 300  # over NAME_MAX (255)
MARK = "gc-bad-input-ran"  # the refused commands would create it: it must never appear
RUNS = f"touch {MARK}"


class Client:
    """One started sandbox of one provider and client, and how to make more (config rows)."""

    def __init__(self, provider: str, flavour: str, base: dict[str, Any]) -> None:
        self.provider = provider
        self.flavour = flavour
        self.base = base
        self.sandbox: Any = None

    def config(self, **fields: Any) -> SandboxConfig:
        merged = {**self.base, **fields}
        merged["provider_config"] = {
            **self.base.get("provider_config", {}),
            **fields.get("provider_config", {}),
        }
        merged["environment_vars"] = {
            **self.base.get("environment_vars", {}),
            **fields.get("environment_vars", {}),
        }
        return SandboxConfig(**merged)

    async def start(self, config: SandboxConfig) -> Any:
        if self.flavour == "async":
            sandbox: Any = await AsyncSandbox(self.provider, config).start()
            sandbox.flavour = "async"
            return sandbox
        return AwaitableSync(SyncSandbox(self.provider, config).start())

    async def connect(self, sandbox_id: Any) -> Any:
        if self.flavour == "async":
            return await AsyncSandbox.connect(sandbox_id, self.provider, self.config())
        return SyncSandbox.connect(sandbox_id, self.provider, self.config())

    async def close(self, sandbox: Any) -> None:
        if self.flavour == "async":
            await sandbox.aclose()
        else:
            await sandbox.close()


Op = Callable[[Client], Awaitable[Any]]


@dataclass(frozen=True)
class Row:
    name: str
    op: Op
    expected: tuple[type[GrainchainError], ...] | None  # None: a correct result is due
    providers: frozenset[str] | None = None  # only these (None: all)
    # a provider's backend that refuses what others take, with a typed error: {provider: errors}
    allowed: dict[str, tuple[type[GrainchainError], ...]] = field(default_factory=dict)


def _ex(command: Any = RUNS, **kwargs: Any) -> Op:
    async def op(c: Client) -> Any:
        return await c.sandbox.execute(command, **kwargs)

    return op


def _start(command: Any = RUNS, **kwargs: Any) -> Op:
    async def op(c: Client) -> Any:
        handle = await c.sandbox.start_process(command, **kwargs)
        await handle.wait(timeout=30)  # (it should never have started)
        return handle

    return op


def _call(method: str, *args: Any, **kwargs: Any) -> Op:
    async def op(c: Client) -> Any:
        return await getattr(c.sandbox, method)(*args, **kwargs)

    return op


def _wait(timeout: float, command: str = "sleep 0.2") -> Op:
    async def op(c: Client) -> Any:
        handle = await c.sandbox.start_process(command)
        try:
            return await handle.wait(timeout=timeout)
        finally:
            await handle.kill()

    return op


def _config(**fields: Any) -> Op:
    """A sandbox made with these SandboxConfig fields: refused (at SandboxConfig or start), or it works."""

    async def op(c: Client) -> Any:
        sandbox = await c.start(c.config(**fields))
        try:
            result = await sandbox.execute("echo ok")
            assert result.stdout == "ok\n", result
            return result
        finally:
            await c.close(sandbox)

    return op


def _dict_config(config: Any) -> Op:
    """Sandbox(provider, config) with a config that is not a SandboxConfig (a dict of its fields: allowed)."""

    async def op(c: Client) -> Any:
        sandbox: Any
        config_given = {**c.base, **config} if isinstance(config, dict) else config  # (docker: its image)
        if c.flavour == "async":
            sandbox = await AsyncSandbox(c.provider, config_given).start()
            sandbox.flavour = "async"
        else:
            sandbox = AwaitableSync(SyncSandbox(c.provider, config_given).start())
        try:
            result = await sandbox.execute("echo ok")
            assert result.stdout == "ok\n", result
            return result
        finally:
            await c.close(sandbox)

    return op


async def _at_the_limits(c: Client) -> Any:
    """Everything at its limit together (SandboxConfig and call environments, the command) runs."""
    value = "v" * (120 * 1024 - 3)  # NAME=value: 120 KiB
    sandbox = await c.start(c.config(environment_vars={f"C{i}": value for i in range(4)}))
    try:
        command = "echo ok #" + "y" * (60 * 1024 - 9)
        result = await sandbox.execute(command, environment={f"K{i}": value for i in range(4)})
        assert (result.stdout, result.return_code) == ("ok\n", 0), result
        return result
    finally:
        await c.close(sandbox)


def _connect(sandbox_id: Any) -> Op:
    async def op(c: Client) -> Any:
        sandbox = await c.connect(sandbox_id)
        await c.close(sandbox)  # (never reached when refused)
        return sandbox

    return op


async def _dump_listing(c: Client) -> Any:
    """A file whose name is not UTF-8: listing it works and every FileInfo serialises (JSON too)."""
    await c.sandbox.execute("touch \"$(printf 'gc-bad\\377name')\"")
    try:
        infos = await c.sandbox.list_files(".")
        dumped = [info.model_dump_json() for info in infos]
        assert any("gc-bad" in text for text in dumped), dumped
        return dumped
    finally:
        await c.sandbox.execute("rm -f gc-bad*")


IA: tuple[type[GrainchainError], ...] = (InvalidArgumentError,)
CONF: tuple[type[GrainchainError], ...] = (ConfigurationError,)
OUTSIDE: tuple[type[GrainchainError], ...] = (ConfigurationError, PathOutsideSandboxError)

ROWS = [
    # environment of a call
    Row("execute env name with =", _ex(environment={"A=B": "1"}), IA),
    Row("execute env name empty", _ex(environment={"": "1"}), IA),
    Row("execute env value with NUL", _ex(environment={"A": "x\0y"}), IA),
    Row("execute env value int", _ex(environment={"A": 1}), IA),
    Row("execute env value 200 KiB", _ex(environment={"A": BIG}), IA),
    Row("execute env not a mapping", _ex(environment=["A=1"]), IA),
    Row("start_process env name with =", _start(environment={"A=B": "1"}), IA),
    Row("start_process env value with NUL", _start(environment={"A": "\0"}), IA),
    Row("start_process env value 200 KiB", _start(environment={"A": BIG}), IA),
    # timeouts
    Row("execute timeout=inf (no limit)", _ex(command="echo ok", timeout=math.inf), None),
    Row("execute timeout=1e10 (over a week)", _ex(timeout=1e10), IA),
    Row("execute timeout=nan", _ex(timeout=math.nan), IA),
    Row("execute timeout=-1", _ex(timeout=-1), IA),
    Row("execute timeout=0", _ex(timeout=0), IA),
    Row("execute timeout='5'", _ex(timeout="5"), IA),
    Row("execute timeout=True", _ex(timeout=True), IA),
    Row("wait timeout=nan", _wait(math.nan), IA),
    Row("wait timeout=-1", _wait(-1), IA),
    Row("wait timeout='1'", _wait("1"), IA),  # type: ignore[arg-type]
    Row("wait timeout=inf (no limit)", _wait(math.inf), None),
    Row("wait timeout=1e10 (over a week)", _wait(1e10), IA),
    Row("wait timeout=a week (allowed)", _wait(7 * 24 * 3600), None),
    # commands, working dirs, callbacks
    Row("execute command None", _ex(command=None), IA),
    Row("execute command bytes", _ex(command=b"true"), IA),
    Row("execute command with NUL", _ex(command="true\0"), IA),
    Row("execute command 200 KiB", _ex(command=f"{RUNS} # {BIG}"), IA),
    Row("start_process command 200 KiB", _start(command=f"{RUNS} # {BIG}"), IA),
    Row("execute command 60 KiB (allowed)", _ex(command=f"echo ok # {'y' * (60 * 1024 - 10)}"), None),
    Row("execute command 60 KiB + 1", _ex(command=f"{RUNS} # {'y' * 60 * 1024}"), IA),
    Row("execute env value 100 KiB (allowed)", _ex(command="echo ok", environment={"A": BIG[:102400]}), None),
    Row("execute working_dir=123", _ex(working_dir=123), IA),
    Row("execute working_dir with NUL", _ex(working_dir="a\0b"), IA),
    Row("execute working_dir empty", _ex(working_dir=""), IA),
    Row("execute working_dir 300-char name", _ex(working_dir=LONG_NAME), IA),
    Row("start_process working_dir=123", _start(working_dir=123), IA),
    Row("execute on_stdout=123", _ex(on_stdout=123), IA),
    Row("execute on_stderr='x'", _ex(on_stderr="x"), IA),
    Row("start_process on_stdout=123", _start(on_stdout=123), IA),
    Row("execute stdin=123", _ex(stdin=123), IA),
    Row("execute stdin list", _ex(stdin=["a"]), IA),
    Row("execute stdin str with a lone surrogate", _ex(stdin="\udcff"), IA),
    Row("start_process stdin='yes'", _start(stdin="yes"), IA),
    Row("start_process stdin=1", _start(stdin=1), IA),
    # files
    Row("upload_file content None", _call("upload_file", "gc-up", None), IA),
    Row("upload_file content 123", _call("upload_file", "gc-up", 123), IA),
    Row("upload_file content 10**12", _call("upload_file", "gc-up", 10**12), IA),
    Row("upload_file content list", _call("upload_file", "gc-up", ["a"]), IA),
    Row("upload_file content True", _call("upload_file", "gc-up", True), IA),
    Row("upload_file path None", _call("upload_file", None, "x"), IA),
    Row("upload_file path 300-char name", _call("upload_file", f"d/{LONG_NAME}", "x"), IA),
    Row("upload_file path over 4096", _call("upload_file", "/".join(["p" * 200] * 22), "x"), IA),
    Row("upload_file mode 'r'", _call("upload_file", "gc-up", "x", "r"), IA),
    Row("upload_file bytearray (allowed)", _call("upload_file", "gc-up", bytearray(b"ok")), None),
    Row("download_file 300-char name", _call("download_file", LONG_NAME), IA),
    Row("download_file path 123", _call("download_file", 123), IA),
    Row("list_files 300-char name", _call("list_files", LONG_NAME), IA),
    Row("get_file_info 300-char name", _call("get_file_info", LONG_NAME), IA),
    Row("file_exists 300-char name", _call("file_exists", LONG_NAME), IA),
    Row("delete_file 300-char name", _call("delete_file", LONG_NAME), IA),
    Row("make_directory 300-char name", _call("make_directory", f"a/{LONG_NAME}/b"), IA),
    Row("make_directory path with NUL", _call("make_directory", "a\0b"), IA),
    Row(
        "FileInfo of a non-UTF-8 name dumps to JSON",
        _dump_listing,
        None,
        frozenset({"local", "docker", "e2b", "modal"}),  # (the memory provider's shell has no printf)
        # E2B's envd sends names as protobuf strings, which must be UTF-8: it cannot list such a file
        allowed={"e2b": (ProviderError, RemoteError)},
    ),
    # snapshots, lifecycle
    Row("create_snapshot kind 'disk'", _call("create_snapshot", "disk"), IA),
    Row("restore_snapshot None", _call("restore_snapshot", None), IA),
    Row("delete_snapshot 123", _call("delete_snapshot", 123), IA),
    Row("wake_up snapshot_id 123", _call("wake_up", 123), IA),
    Row("port_address '80'", _call("port_address", "80"), IA),
    Row("port_address 70000", _call("port_address", 70000), IA),
    # text that no backend can take as UTF-8 (lone surrogates)
    Row("execute command with a lone surrogate", _ex(command=f"{RUNS} \udcff"), IA),
    Row("execute env value with a lone surrogate", _ex(environment={"A": "\udcff"}), IA),
    Row("upload_file str content with a lone surrogate", _call("upload_file", "gc-up", "\udcff"), IA),
    Row("upload_file path with a lone surrogate (not an escape)", _call("upload_file", "gc-\ud800", "x"), IA),
    Row(
        "upload_file a name that is not UTF-8",  # local writes it; backends that take only UTF-8 refuse
        _call("upload_file", "gc-up\udcff", "x"),
        None,
        allowed=dict.fromkeys(("docker", "e2b", "modal", "memory"), IA),
    ),
    Row("connect(None)", _connect(None), IA),
    Row("connect(123)", _connect(123), IA),
    Row("connect('')", _connect(""), (SandboxNotFoundError,)),
    Row("connect(id with NUL)", _connect("abc\0"), (SandboxNotFoundError,)),
    Row("connect(unknown id)", _connect("gc-no-such-sandbox"), (SandboxNotFoundError,)),
    # SandboxConfig: refused when built (ConfigurationError), or the sandbox works
    Row("config env name with =", _config(environment_vars={"A=B": "1"}), CONF),
    Row("config env value with NUL", _config(environment_vars={"A": "\0"}), CONF),
    Row("config env value 200 KiB", _config(environment_vars={"A": BIG}), CONF),
    Row("config env value int", _config(environment_vars={"A": 1}), CONF),
    Row("config and call environments and command at their limits (allowed)", _at_the_limits, None),
    Row("config timeout nan", _config(timeout=math.nan), CONF),
    Row("config timeout -1", _config(timeout=-1), CONF),
    Row("config timeout inf (no limit)", _config(timeout=math.inf), None),
    Row("config timeout 1e10 (over a week)", _config(timeout=1e10), CONF),
    Row("execute timeout=a week (allowed)", _ex(command="echo ok", timeout=7 * 24 * 3600), None),
    Row("config working_directory 123", _config(working_directory=123), CONF),
    Row("config working_directory with NUL", _config(working_directory="a\0b"), CONF),
    Row("config working_directory ../out", _config(working_directory="../out"), OUTSIDE),
    Row("config working_directory /etc", _config(working_directory="/etc"), OUTSIDE),
    Row("config output_limit 0", _config(output_limit=0), CONF),
    Row("config cpu_limit inf", _config(cpu_limit=math.inf), CONF),
    Row("config cpu_limit 1e9", _config(cpu_limit=1e9), CONF),
    Row("config cpu_limit nan", _config(cpu_limit=math.nan), CONF),
    Row("config unknown field", _config(memory_limt="1GB"), CONF),
    Row("config timeout True", _config(timeout=True), CONF),
    Row("config cpu_limit True", _config(cpu_limit=True), CONF),
    Row("config image ''", _config(image=""), CONF),
    Row("config ports [0]", _config(ports=[0]), CONF),
    Row("config ports ['80']", _config(ports=["80"]), CONF),
    Row("config as a dict (allowed)", _dict_config({"timeout": 30}), None),
    Row("config as a dict, timeout -1", _dict_config({"timeout": -1}), CONF),
    Row("config as a str", _dict_config("timeout=5"), CONF),
    # limits the provider cannot honour here: refused before anything is made, not a backend's error
    Row("config memory_limit 1 byte", _config(memory_limit=1), CONF, frozenset({"local", "docker"})),
    Row("config memory_limit 5m (5 MiB)", _config(memory_limit="5m"), CONF, frozenset({"local", "docker"})),
    Row("config memory_limit 6m (allowed)", _config(memory_limit="6m"), None, frozenset({"local", "docker"})),
    Row("config cpu_limit 4096 cores", _config(cpu_limit=4096), CONF, frozenset({"local", "docker"})),
    Row(
        "docker pids_limit -1",
        _config(provider_config={"pids_limit": -1}),
        CONF,
        frozenset({"docker"}),
    ),
    Row("docker ttl inf", _config(provider_config={"ttl": math.inf}), CONF, frozenset({"docker"})),
    Row("docker ttl '10'", _config(provider_config={"ttl": "10"}), CONF, frozenset({"docker"})),
    Row(
        "docker pids_limit '10'",
        _config(provider_config={"pids_limit": "10"}),
        CONF,
        frozenset({"docker"}),
    ),
]


@dataclass
class Tally:
    rows: int = 0
    typed: int = 0
    untyped: int = 0
    not_applicable: int = 0
    problems: list[str] = field(default_factory=list)


TALLIES: dict[str, Tally] = {}


async def _usable(c: Client) -> str | None:
    """None when the sandbox still works and the refused call ran nothing; else what is wrong."""
    check = f"test -e {MARK} && echo RAN; rm -f {MARK} gc-up; echo ok"
    try:
        result = await c.sandbox.execute(check)
    except Exception:
        # once more: the cloud fakes' bubblewrap fails now and then when the host's mounts change under it
        # (other tests mounting), which says nothing about the row
        try:
            result = await c.sandbox.execute(check)
        except Exception as exc:
            return f"sandbox unusable after the row: {type(exc).__name__}: {str(exc)[:200]}"
    if "RAN" in result.stdout:
        return "the refused call ran its command"
    if "ok" not in result.stdout:
        return f"sandbox unusable after the row: {result!r}"[:300]
    return None


async def run_rows(c: Client) -> Tally:
    tally = Tally()
    for row in ROWS:
        if row.providers is not None and c.provider not in row.providers:
            continue
        tally.rows += 1
        problem: str | None = None
        try:
            await row.op(c)
        except CapabilityError:
            tally.not_applicable += 1  # the provider lacks the feature: typed, and said before running
            tally.typed += 1
        except GrainchainError as exc:
            tally.typed += 1
            if isinstance(exc, row.allowed.get(c.provider, ())):
                pass
            elif row.expected is None:
                problem = f"wanted a result, got {type(exc).__name__}: {str(exc)[:200]}"
            elif not isinstance(exc, row.expected):
                problem = (
                    f"wanted {[e.__name__ for e in row.expected]}, got {type(exc).__name__}: {str(exc)[:200]}"
                )
        except Exception as exc:  # untyped
            tally.untyped += 1
            problem = f"UNTYPED {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"
        else:
            if row.expected is None:
                tally.typed += 1
            else:
                tally.untyped += 1
                problem = "UNTYPED silently accepted"
        broken = await _usable(c)
        if broken:
            problem = f"{problem}; {broken}" if problem else broken
        if problem:
            tally.problems.append(f"{row.name}: {problem}")
    return tally


async def check_provider(name: str, provider: str, flavour: str, base: dict[str, Any]) -> None:
    client = Client(provider, flavour, base)
    client.sandbox = await client.start(client.config())
    try:
        tally = await run_rows(client)
    finally:
        with contextlib.suppress(Exception):
            await client.close(client.sandbox)
    TALLIES[name] = tally
    assert not tally.problems, f"{name}: {len(tally.problems)} rows wrong:\n  " + "\n  ".join(tally.problems)


# -- providers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("isolation", "flavour"), [("none", "async"), ("none", "sync"), ("namespaces", "async")]
)
async def test_local(isolation: str, flavour: str) -> None:
    from grainchain.providers.local._isolation import namespaces_unavailable

    if isolation == "namespaces" and (why := namespaces_unavailable()):
        pytest.skip(f"no namespaces here: {why}")
    await check_provider(
        f"local/{isolation}/{flavour}", "local", flavour, {"provider_config": {"isolation": isolation}}
    )


def _docker_reason() -> str | None:
    import httpx

    from grainchain.providers.docker import _engine as dk

    endpoint = dk.engine_endpoint()
    if endpoint.uds and not os.path.exists(endpoint.uds):
        return f"no docker engine at {endpoint.describe()}"
    transport = httpx.HTTPTransport(uds=endpoint.uds) if endpoint.uds else None
    try:
        with httpx.Client(transport=transport, base_url=endpoint.base_url, timeout=5) as client:
            if client.get(f"/images/{DOCKER_IMAGE}/json").status_code != 200:
                return f"no image {DOCKER_IMAGE} (run .ci/docker-up)"
    except (httpx.HTTPError, OSError) as exc:
        return f"no docker engine ({exc})"
    return None


async def test_docker() -> None:
    if reason := _docker_reason():
        if os.environ.get("GRAINCHAIN_REQUIRE_DOCKER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    run = {"GRAINCHAIN_TEST_RUN": uuid.uuid4().hex}
    await check_provider("docker", "docker", "async", {"image": DOCKER_IMAGE, "environment_vars": run})


@pytest.fixture
def e2b(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from tests.providers.e2b_fake import FakeE2B

    with FakeE2B() as fake:
        for name, value in fake.env.items():
            monkeypatch.setenv(name, value)
        yield


@pytest.fixture
def modal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from tests.providers.modal_fake import FakeModal

    with FakeModal() as fake:
        for name, value in fake.env.items():
            monkeypatch.setenv(name, value)
        yield


async def test_e2b(e2b: None) -> None:
    await check_provider("e2b", "e2b", "async", {})


async def test_modal(modal: None) -> None:
    await check_provider("modal", "modal", "async", {})


async def test_memory(memory_provider: Any) -> None:
    memory_provider()
    await check_provider("memory", "memory", "async", {})


def test_zz_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-provider table (printed at the end of the run); no untyped error anywhere."""
    lines = [f"{'provider':<24}{'rows':>6}{'typed':>7}{'untyped':>9}{'n/a':>5}{'wrong':>7}"]
    for name, tally in TALLIES.items():
        lines.append(
            f"{name:<24}{tally.rows:>6}{tally.typed:>7}{tally.untyped:>9}{tally.not_applicable:>5}"
            f"{len(tally.problems):>7}"
        )
    for name, tally in TALLIES.items():
        _reliability.record(name.split("/")[0], faults=tally.rows, untyped=tally.untyped)
    with capsys.disabled():
        print("\nbad input, per provider:", *lines, sep="\n")
    assert sum(t.untyped for t in TALLIES.values()) == 0, "\n".join(lines)
