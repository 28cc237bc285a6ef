"""The `grainchain` command.

    grainchain run [--provider P] [--image IMG] [--config JSON] [--timeout S] [--workdir DIR]
                   [--env KEY=VALUE ...] [--env-file FILE ...] -- CMD [ARGS]...
    grainchain providers [--json]
    grainchain conformance PROVIDER [--thorough] [--config JSON] [-- PYTEST ARGS...]
    grainchain spec show
    grainchain sandboxes [--provider P ...] [--json]          |  grainchain sandboxes close ID [--provider P]
    grainchain snapshots [list] [--provider P ...] [--json]   |  grainchain snapshots delete ID... [--provider P]
    grainchain snapshots prune [--expired] [--provider P ...] [--dry-run]
    grainchain cleanup [--provider P ...] [--dry-run] [--json]
    grainchain benchmark run [--provider P ...] [--iterations N] [--warmup W] [--output DIR] [--quick]
                             [--config PROVIDER=JSON ...]
    grainchain benchmark compare OLD.json NEW.json [--threshold F] [--min-delta-ms MS]
    grainchain --version

Exit status: `run` passes the command's exit code through (128+N when a signal N killed it); it exits 124
when the command timed out (as coreutils `timeout` does), 130 on Ctrl-C, 143 on SIGTERM and 141 when its
stdout is closed (the command is killed and the sandbox closed in each case). `conformance` exits 0 when the
suite passes and 1 when it fails; `benchmark run` exits 1 when an attempt failed, `benchmark compare` when
an operation got slower beyond noise. Otherwise: 0 on success, 2 for usage errors, 1 for every other error.
An error is one line on stderr, never a traceback.

`import grainchain` never imports this module: typer and rich load only for the command.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol, TextIO, cast

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from grainchain import __version__
from grainchain._checks import check_env_names, check_positive
from grainchain._generated.features import Feature
from grainchain._provider_info import ProviderInfo
from grainchain.errors import (
    CommandTimeoutError,
    ConfigurationError,
    GrainchainError,
    InvalidArgumentError,
    ProviderNotFoundError,
)
from grainchain.models import SandboxConfig, SupportLevel
from grainchain.registry import all_providers, get_provider
from grainchain.settings import ENV_PREFIX, Settings, config_file_path, load_settings, validate_config
from grainchain.sync import Sandbox

if TYPE_CHECKING:
    from grainchain.benchmark import BenchmarkRun

PROG_NAME = "grainchain"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # coreutils `timeout`
EXIT_INTERRUPTED = 130  # 128 + SIGINT


app = typer.Typer(
    name=PROG_NAME,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
spec_app = typer.Typer(help="The capability spec that the SDK is generated from.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


def _click_exception(name: str) -> type[Exception]:
    """A click exception class, found through typer's public API: recent typer releases vendor click as
    the private typer._click, older ones use click itself."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name and issubclass(cls, Exception):
            return cls
    raise ImportError(f"typer {typer.__version__}: no {name} above typer.BadParameter")


_UsageError = _click_exception("UsageError")
_ClickException = _click_exception("ClickException")


class _ClickError(Protocol):
    """What main() uses of a click exception."""

    exit_code: int
    ctx: Any

    def format_message(self) -> str: ...


# -- output helpers -------------------------------------------------------------------------------------


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _one_line(message: str) -> str:
    """Fold a multi-line message (settings errors list one field per line) into one line."""
    first, *rest = [line.strip() for line in message.splitlines() if line.strip()] or [""]
    return f"{first} {'; '.join(rest)}" if rest else first


def _print_error(message: str, *, prefix: str = "error") -> None:
    text = Text(f"{prefix}: ", style="bold red" if prefix == "error" else "bold yellow")
    text.append(_one_line(message))
    _stderr().print(text)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _print_error(message)
    raise typer.Exit(code)


class _RawWriter:
    """Copies chunks of a command's output to a stream as they arrive: no markup, flushed at once.

    The SDK decodes output as UTF-8 (invalid bytes replaced); writing it back as UTF-8 bytes passes valid
    UTF-8 through byte for byte, whatever the terminal's locale.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, chunk: str) -> None:
        buffer = getattr(self._stream, "buffer", None)
        if buffer is None:
            self._stream.write(chunk)
            self._stream.flush()
        else:
            buffer.write(chunk.encode("utf-8", errors="replace"))
            buffer.flush()


class _Terminated(BaseException):
    """SIGTERM/SIGHUP while a command runs: unwind so that the sandbox is closed and its processes killed.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_unwind() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise _Terminated(signum)

    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s]
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- root -------------------------------------------------------------------------------------------------


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG_NAME} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Run commands in sandboxes of any provider, and inspect what each provider supports."""


# -- run --------------------------------------------------------------------------------------------------


def _provider_names() -> list[str]:
    try:
        return list(all_providers())
    except GrainchainError:
        return []


def _check_timeout(value: float | None) -> float | None:
    try:  # the API's rule (execute's timeout), not one of the CLI's own
        check_positive("run", "--timeout", value)
    except InvalidArgumentError as exc:
        raise typer.BadParameter(exc.message.removeprefix("--timeout ")) from None
    return value


def _parse_env(values: list[str] | None) -> dict[str, str]:
    environment: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="'--env'")
        _check_variable(name, value, "'--env'", "")
        environment[name] = value
    return environment


def _check_variable(name: str, value: str, hint: str, where: str) -> None:
    """A variable as execute's `environment` takes it (the API's check), else a usage error."""
    try:
        check_env_names("run", "environment", {name: value})
    except InvalidArgumentError as exc:
        raise typer.BadParameter(where + exc.message.removeprefix("environment: "), param_hint=hint) from None


def _read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as python-dotenv reads them (comments, blank lines, `export`, quotes, ${VAR} from earlier
    lines or the environment); a line it cannot read, a bad name or a name without a value is a usage error
    naming the file and the line."""
    from dotenv import dotenv_values  # (python-dotenv: a dependency of pydantic-settings)
    from dotenv.parser import parse_stream

    hint = "'--env-file'"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint=hint) from None
    for binding in parse_stream(io.StringIO(text)):
        text_of = binding.original.string  # (it starts with the blank lines before it)
        skipped = text_of[: len(text_of) - len(text_of.lstrip())].count("\n")
        where = f"{path}, line {binding.original.line + skipped}"
        if binding.error:
            line = text_of.strip()
            raise typer.BadParameter(f"{where}: expected KEY=VALUE, got {line!r}", param_hint=hint)
        if binding.key is None:
            continue  # a comment or a blank line
        if binding.value is not None:
            _check_variable(binding.key, binding.value, hint, f"{where}: ")
        else:
            raise typer.BadParameter(
                f"{where}: {binding.key} has no value (write {binding.key}= for an empty one)",
                param_hint=hint,
            )
    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}


def _run_config(config: str | None, image: str | None) -> SandboxConfig | None:
    """--config JSON (SandboxConfig's fields) with --image over it, checked as SandboxConfig checks them."""
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = json.loads(config)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="'--config'") from None
        if not isinstance(data, dict):
            raise typer.BadParameter(
                f"expected a JSON object of SandboxConfig fields, got {config!r}", param_hint="'--config'"
            )
    if image is not None:
        data["image"] = image
    if not data:
        return None
    try:
        return validate_config(data)
    except ConfigurationError as exc:
        source = "--config" if config is not None else "--image"
        raise typer.BadParameter(
            exc.message.replace("invalid settings in SandboxConfig:", "invalid SandboxConfig:", 1),
            param_hint=f"'{source}'",
        ) from None


def _resolve_provider(name: str | None, settings: Settings) -> ProviderInfo:
    """The named provider (unknown: usage error), else the configured default (unknown: config error)."""
    if name is not None:
        try:
            return get_provider(name)
        except ProviderNotFoundError as exc:
            _fail(exc.message, EXIT_USAGE)
    try:
        return get_provider(settings.default_provider)
    except ProviderNotFoundError as exc:
        variable = f"{ENV_PREFIX}DEFAULT_PROVIDER"
        from_env = any(key.upper() == variable for key in os.environ)
        source = variable if from_env else f"default_provider in {config_file_path()}"
        raise ConfigurationError(f"{exc.message} (default provider set by {source})") from None


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD",
            help="The command and its arguments, best after `--`. They are quoted with shlex.join; "
            "for pipes and redirections run a shell: -- sh -c 'a | b'.",
            show_default=False,
        ),
    ],
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            "-p",
            help="Provider to use (see `grainchain providers`). Default: the configured default_provider.",
            autocompletion=_provider_names,
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            "-t",
            metavar="SECONDS",
            callback=_check_timeout,
            help="Kill the command after this many seconds and exit with 124. "
            "Default: SandboxConfig.timeout (300 unless the config file sets another).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            "-i",
            metavar="IMG",
            help="Image the sandbox starts from (SandboxConfig.image; the provider must support images).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="JSON",
            help='SandboxConfig of the sandbox as a JSON object, e.g. \'{"memory_limit": "512m", '
            '"provider_config": {"isolation": "none"}}\'; --image and the other options win over it.',
            show_default=False,
        ),
    ] = None,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            "-w",
            metavar="DIR",
            help="Directory to run in, as execute's working_dir: absolute, or relative to the sandbox's "
            "working directory; created if missing, where the sandbox's path rules allow.",
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="KEY=VALUE",
            help="Set an environment variable of the command; repeat for more (wins over --env-file).",
            show_default=False,
        ),
    ] = None,
    env_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--env-file",
            metavar="FILE",
            help="Read environment variables from a dotenv file (KEY=VALUE lines, # comments, quotes); "
            "repeat for more, later files win.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a command in a fresh sandbox, streaming its output, and exit with its exit code.

    Example: grainchain run --timeout 60 -- python3 -c 'print(6*7)'
    """
    environment: dict[str, str] = {}
    for path in env_file or []:
        environment.update(_read_env_file(path))
    environment.update(_parse_env(env))
    sandbox_config = _run_config(config, image)
    settings = load_settings()  # ConfigurationError: main() reports it in one line
    info = _resolve_provider(provider, settings)
    line = shlex.join(command)
    try:
        with Sandbox(info.name, sandbox_config, settings=settings) as sandbox, _signals_unwind():
            if workdir is not None and sandbox.supports(Feature.FILES):
                sandbox.make_directory(workdir)  # the API's path rules: what it refuses, execute would too
            result = sandbox.execute(
                line,
                timeout=timeout,
                working_dir=workdir,
                environment=environment or None,
                on_stdout=_RawWriter(sys.stdout),
                on_stderr=_RawWriter(sys.stderr),
            )
    except CommandTimeoutError as exc:
        _fail(f"command timed out after {exc.timeout:g}s and was killed: {line}", EXIT_TIMEOUT)
    except BrokenPipeError:
        # The reader of our stdout went away (`grainchain run -- yes | head`): the command was killed; exit
        # as a process killed by SIGPIPE would, without a second error when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(128 + 13) from None
    except _Terminated as exc:
        raise typer.Exit(128 + exc.signum) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(result.return_code)


# -- providers --------------------------------------------------------------------------------------------

_MARKS = {
    SupportLevel.native: ("✓", "green"),
    SupportLevel.emulated: ("~", "yellow"),
    SupportLevel.unsupported: ("✗", "dim red"),
}
_ASCII_MARKS = {SupportLevel.native: "+", SupportLevel.emulated: "~", SupportLevel.unsupported: "-"}


def _default_provider_or_none() -> str | None:
    """The configured default provider; a broken configuration is a warning here, not a failure."""
    try:
        return load_settings().default_provider
    except ConfigurationError as exc:
        _print_error(f"ignoring the settings: {exc}", prefix="warning")
        return None


def _provider_record(info: ProviderInfo, default: str | None) -> dict[str, Any]:
    missing = info.missing_credentials()
    return {
        "name": info.name,
        "status": info.status,
        "default": info.name == default,
        "summary": info.summary,
        "installed": info.is_installed(),
        "sdk_module": info.sdk_module,
        "install_hint": info.install_hint,
        "configured": not missing,
        "credentials_env": list(info.credentials_env),
        "missing_credentials": missing,
        "features": {feature.value: info.level(feature).value for feature in Feature},
        **_narrowed_here(info, missing),
    }


def _narrowed_here(info: ProviderInfo, missing_credentials: list[str]) -> dict[str, Any]:
    """What this machine (or service) lacks of the provider's declared features, each with the reason:
    {"missing_here": {feature: reason}}, or {"probe_error": why} when its backend could not be asked. Only
    providers that can run here are probed."""
    if info.status != "available" or not info.is_installed() or missing_credentials:
        return {"missing_here": None}
    try:
        found = Sandbox.probe_missing_features(info.name)
    except GrainchainError as exc:
        return {"missing_here": None, "probe_error": str(exc)}
    return {"missing_here": {feature.value: reason for feature, reason in found.items()}}


def _status_cell(record: dict[str, Any]) -> Text:
    if record["status"] == "available":
        return Text("available", style="green")
    if record["status"] == "planned":
        return Text("planned", style="yellow")
    return Text(str(record["status"]))


def _installed_cell(record: dict[str, Any]) -> Text:
    if record["installed"]:
        return Text("yes", style="green")
    return Text(f"no: {record['install_hint']}", style="red")


def _configured_cell(record: dict[str, Any]) -> Text:
    if not record["credentials_env"]:
        return Text("yes (none needed)", style="green")
    if record["configured"]:
        return Text("yes", style="green")
    return Text(f"no: set {', '.join(record['missing_credentials'])}", style="red")


@app.command()
def providers(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")
    ] = False,
) -> None:
    """List the providers: status, whether their SDK is installed and configured, and their features."""
    default = _default_provider_or_none()
    infos = sorted(all_providers().values(), key=lambda i: (i.status != "available", i.name))
    records = [_provider_record(info, default) for info in infos]
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return

    console = _stdout()
    unicode = console.encoding.lower().startswith("utf")
    overview = Table(title="Providers", title_justify="left")
    overview.add_column("provider", style="bold", no_wrap=True)
    overview.add_column("status", no_wrap=True)
    overview.add_column("installed")
    overview.add_column("configured")
    for record in records:
        name = Text(record["name"], style="bold")
        if record["default"]:
            name.append(" (default)", style="dim")
        overview.add_row(name, _status_cell(record), _installed_cell(record), _configured_cell(record))
    console.print(overview)

    matrix = Table(title="Feature support", title_justify="left")
    matrix.add_column("feature", no_wrap=True)
    for record in records:
        matrix.add_column(record["name"], justify="center", no_wrap=True)
    for feature in Feature:
        cells: list[Text | str] = [feature.value]
        for record in records:
            level = SupportLevel(record["features"][feature.value])
            mark, style = _MARKS[level]
            cell = Text(mark if unicode else _ASCII_MARKS[level], style=style)
            if feature.value in (record["missing_here"] or {}):  # declared, lacking on this machine
                unsupported, unsupported_style = _MARKS[SupportLevel.unsupported]
                cell.append("→" if unicode else ">", style="dim")
                cell.append(
                    unsupported if unicode else _ASCII_MARKS[SupportLevel.unsupported], unsupported_style
                )
            cells.append(cell)
        matrix.add_row(*cells)
    console.print(matrix)
    legend = " ".join(
        f"{mark if unicode else _ASCII_MARKS[level]} {level.value}" for level, (mark, _) in _MARKS.items()
    )
    console.print(Text(legend + "; declared → here: lacking on this machine (below)", style="dim"))
    for record in records:
        for feature_name, reason in (record["missing_here"] or {}).items():
            console.print(f"{record['name']} {feature_name}: {reason}", markup=False, highlight=False)
        if "probe_error" in record:
            console.print(
                f"{record['name']}: could not be probed here: {record['probe_error']}",
                markup=False,
                highlight=False,
            )


# -- conformance ------------------------------------------------------------------------------------------

CONFORMANCE_INSTALL_HINT = "pip install 'grainchain[conformance]'"
# pytest.ExitCode.USAGE_ERROR and NO_TESTS_COLLECTED
_PYTEST_USAGE_ERROR = 4
_PYTEST_NO_TESTS = 5


def _missing_conformance_dependency() -> str | None:
    """The first of the suite's dependencies that cannot be imported, if any."""
    for module in ("grainchain_conformance", "pytest", "hypothesis"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def _conformance_command(provider: str, config: str | None, thorough: bool, report: Path) -> list[str]:
    command = [sys.executable, "-m", "pytest", "--pyargs", "grainchain_conformance"]
    command += ["--grainchain-provider", provider, "--grainchain-report", str(report)]
    command += ["--grainchain-no-table", "-p", "no:cacheprovider", "-q"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        command += ["-p", "grainchain_conformance.plugin"]  # not loaded through its entry point then
    if config is not None:
        command += ["--grainchain-config", config]
    if thorough:
        command.append("--grainchain-thorough")
    return command


def _run_pytest(command: list[str]) -> int:
    """Run the suite, its output passing straight through; Ctrl-C and SIGTERM let it close its sandboxes."""
    child = subprocess.Popen(command)
    try:
        with _signals_unwind():
            return child.wait()
    except (KeyboardInterrupt, _Terminated) as exc:
        signum = exc.signum if isinstance(exc, _Terminated) else signal.SIGINT
        if isinstance(exc, _Terminated):
            # pytest unwinds on SIGINT (closing its sandboxes), not on SIGTERM; a Ctrl-C reached it already
            child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=30)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        raise typer.Exit(128 + signum) from None


def _level_cell(level: str | None, unicode: bool) -> Text:
    if level is None:
        return Text("not declared", style="red")
    mark, style = _MARKS[SupportLevel(level)]
    return Text(f"{mark if unicode else _ASCII_MARKS[SupportLevel(level)]} {level}", style=style)


def _result_cell(counts: dict[str, int]) -> Text:
    if counts.get("failed", 0):
        return Text("FAILED", style="bold red")
    if counts.get("passed", 0):
        return Text("passed", style="green")
    return Text("untested", style="dim")


def _print_conformance_report(report: dict[str, Any]) -> None:
    """Per feature: declared level and test outcomes; then the totals and the failed tests."""
    console = _stdout()
    unicode = console.encoding.lower().startswith("utf")
    levels: dict[str, str] = report.get("declared", report.get("capabilities", {}))
    missing_here: dict[str, str] = report.get("missing_here", {})
    tally: dict[str, dict[str, int]] = report["features"]
    table = Table(  # fits 80 columns: no vertical rules
        title=f"Conformance of {report['provider']!r} ({report['budget']} budget)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("feature", no_wrap=True)
    table.add_column("declared", no_wrap=True)
    table.add_column(
        "spec", justify="right", no_wrap=True
    )  # of the spec's promises about it: how many have a test
    for outcome in ("pass", "fail", "skip"):  # (short: the table fits 80 columns)
        table.add_column(outcome, justify="right")
    table.add_column("result", no_wrap=True)
    features = [f.value for f in Feature]
    for name in features + sorted(set(tally) - set(features)):  # "(general)": tests of no one feature
        counts = tally.get(name, {})
        level = levels.get(name) if name in features else "-"
        promised = counts.get("promises", 0)
        cell = _level_cell(level, unicode) if level != "-" else Text("-", style="dim")
        if name in missing_here:  # declared, lacking on this machine: its tests are skipped
            cell.append("→✗" if unicode else "->-", style="red")
        table.add_row(
            name,
            cell,
            f"{counts.get('promises_checked', 0)}/{promised}" if promised else "-",
            *(str(counts.get(outcome, 0)) for outcome in ("passed", "failed", "skipped")),
            _result_cell(counts),
        )
    console.print(table)

    supported = sum(1 for f in features if levels.get(f, SupportLevel.unsupported.value) != "unsupported")
    run = [f for f in features if tally.get(f, {}).get("passed", 0) + tally.get(f, {}).get("failed", 0)]
    failed_features = [f for f in run if tally[f].get("failed", 0)]
    console.print(
        f"features declared: {supported} supported / {len(features) - supported} unsupported; "
        f"tested: {len(run)}; passed: {len(run) - len(failed_features)}; failed: {len(failed_features)}",
        soft_wrap=True,
    )
    for name, reason in missing_here.items():
        console.print(f"{name}: unsupported here ({reason}); its tests were skipped", soft_wrap=True)
    if report["failed"]:
        console.print(Text(f"failed tests ({len(report['failed'])}):", style="bold red"))
        for nodeid in report["failed"]:
            console.print(Text(f"  {nodeid}", style="red"), soft_wrap=True)  # never wrapped


@app.command()
def conformance(
    provider: Annotated[
        str,
        typer.Argument(
            metavar="PROVIDER",
            help="Provider to check (see `grainchain providers`); plugins registered under the "
            "grainchain.providers entry point too.",
            autocompletion=_provider_names,
            show_default=False,
        ),
    ],
    pytest_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- PYTEST_ARGS",
            help="Passed on to pytest (after `--`), e.g. -- -x -k state_machine",
            show_default=False,
        ),
    ] = None,
    thorough: Annotated[
        bool,
        typer.Option("--thorough", help="Release-check budget: many more Hypothesis examples, longer runs."),
    ] = False,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="JSON",
            help='SandboxConfig of the sandboxes the suite creates, as JSON, e.g. \'{"image": "alpine"}\'.',
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the conformance suite against a provider and summarise the results per feature.

    Runs pytest --pyargs grainchain_conformance --grainchain-provider PROVIDER,
    showing its progress and failures (with Hypothesis's shrunk steps) as they
    happen, then a table: per feature, the declared level and the tests passed,
    failed and skipped. Exits 0 when the suite passes, 1 when it fails.

    Example: grainchain conformance local -- -x -k state_machine
    (see docs/writing-a-provider.md)
    """
    if missing := _missing_conformance_dependency():
        _fail(f"the conformance suite needs {missing}: {CONFORMANCE_INSTALL_HINT}")
    try:
        info = get_provider(provider)
    except ProviderNotFoundError as exc:
        _fail(exc.message, EXIT_USAGE)
    if config is not None:
        try:
            data = json.loads(config)
        except json.JSONDecodeError as exc:
            _fail(f"--config is not valid JSON: {exc}", EXIT_USAGE)
        try:
            validate_config(data)
        except ConfigurationError as exc:
            _fail(f"--config: {exc.message}", EXIT_USAGE)
    info.load_adapter("sync")  # the suite drives the blocking client: ProviderUnavailableError here, once

    budget = "thorough" if thorough else "ci"
    _stdout().print(Text(f"grainchain conformance: provider {info.name!r}, {budget} budget", style="bold"))
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="grainchain-conformance-") as tmp:
        report_path = Path(tmp, "report.json")
        status = _run_pytest(
            [*_conformance_command(info.name, config, thorough, report_path), *(pytest_args or [])]
        )
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else None
    if report is None:
        if status == _PYTEST_NO_TESTS:
            _fail("no conformance test was selected (pytest exit status 5)")
        code = EXIT_USAGE if status == _PYTEST_USAGE_ERROR else EXIT_ERROR
        _fail(f"the suite did not run to the end (pytest exit status {status}; its output is above)", code)
    sys.stdout.write("\n")
    _print_conformance_report(report)
    if status != 0:
        _stdout().print(
            Text(f"conformance of {info.name!r}: FAILED (pytest exit status {status})", style="bold red")
        )
        raise typer.Exit(EXIT_ERROR)
    _stdout().print(Text(f"conformance of {info.name!r}: passed", style="bold green"))


# -- spec -------------------------------------------------------------------------------------------------


@spec_app.command("show")
def spec_show() -> None:
    """Print the capability spec this grainchain was generated from (JSON).

    The YAML source, its schema and `python -m spec` (the validator) live in the repository's spec/."""
    from grainchain._generated.spec import spec_json

    sys.stdout.write(spec_json())


# -- benchmark --------------------------------------------------------------------------------------------

benchmark_app = typer.Typer(
    help="Measure providers and grainchain's overhead over raw calls; compare two runs.", no_args_is_help=True
)
app.add_typer(benchmark_app, name="benchmark")

_QUICK_ITERATIONS = 3


def _provider_configs(values: list[str] | None, providers: list[str]) -> dict[str, SandboxConfig]:
    """--config PROVIDER=JSON, one per provider."""
    configs: dict[str, SandboxConfig] = {}
    for item in values or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            _fail(f"--config: expected PROVIDER=JSON, got {item!r}", EXIT_USAGE)
        if name not in providers:
            _fail(
                f"--config names {name!r}, which is not benchmarked (--provider {name} is missing)",
                EXIT_USAGE,
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            _fail(f"--config {name}: not valid JSON: {exc}", EXIT_USAGE)
        if not isinstance(data, dict):
            _fail(f"--config {name}: expected a JSON object of SandboxConfig fields", EXIT_USAGE)
        try:
            configs[name] = validate_config(data)
        except ConfigurationError as exc:
            _fail(f"--config {name}: {exc.message}", EXIT_USAGE)
    return configs


class _ProgressBar:
    """The runner's progress, drawn by rich (on stderr, so that stdout stays the report)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description:<52}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_stderr(),
            transient=True,
        )
        self._task = self._bar.add_task("starting", total=None)

    def __enter__(self) -> _ProgressBar:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, total: int) -> None:
        self._bar.update(self._task, total=total)

    def step(self, label: str) -> None:
        self._bar.update(self._task, description=label)

    def advance(self, units: int = 1) -> None:
        self._bar.advance(self._task, units)


def _wide_stdout() -> Console:
    """Wide enough for the benchmark's tables when stdout is not a terminal (CI logs, files)."""
    console = _stdout()
    return console if console.is_terminal else Console(highlight=False, width=120)


def _print_run(run: BenchmarkRun) -> None:
    """The measurements as tables (what summary.md holds, for the terminal)."""
    from grainchain.benchmark.report import TABLE_HEADER, import_line, table_notes, table_rows

    console = _wide_stdout()
    if line := import_line(run):
        console.print(line, soft_wrap=True)
    for result in run.providers:
        if result.error:
            console.print(
                Text(f"{result.provider}: not measured: {result.error}", style="red"), soft_wrap=True
            )
        if not result.measurements:
            continue
        table = Table(title=f"{result.provider} (ms)", title_justify="left", box=box.SIMPLE_HEAD)
        for i, header in enumerate(TABLE_HEADER):
            table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in table_rows(result):
            table.add_row(*row)
        console.print(table)
        for note in table_notes(result):
            console.print(Text(note, style="dim"), soft_wrap=True)


@benchmark_app.command("run")
def benchmark_run(
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            "-p",
            help="Provider to measure; repeat for more. Default: the configured default_provider.",
            autocompletion=_provider_names,
            show_default=False,
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations",
            "-n",
            min=1,
            help="Measured calls per operation (heavy operations: a quarter). Default 20, --quick 3.",
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(
            "--warmup", min=0, help="Uncounted calls first. Default 2, --quick 1.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Where results.json, summary.md, chart.png go."),
    ] = Path("bench-results"),
    quick: Annotated[
        bool,
        typer.Option("--quick", help="A smoke test in seconds per provider: tiny sizes, heavy steps once."),
    ] = False,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            metavar="PROVIDER=JSON",
            help='SandboxConfig of a provider\'s sandboxes, e.g. docker=\'{"image": "python:3.11-slim"}\'.',
            show_default=False,
        ),
    ] = None,
) -> None:
    """Measure providers: create, exec, files, snapshots, concurrency, each against a raw baseline.

    Every operation is timed client-side, alternating with the same operation done without grainchain
    (plain subprocess for local, direct Engine API calls for docker); the ratio of the two medians is
    grainchain's overhead. Exits 1 when any attempt failed (the results are written all the same).

    Example: grainchain benchmark run -p local -p docker --config docker='{"image": "python:3.11-slim"}'
    """
    from grainchain.benchmark import Options, run_benchmark, write_outputs

    settings = load_settings()
    if provider:
        names = list(dict.fromkeys(_resolve_provider(name, settings).name for name in provider))
    else:
        names = [_resolve_provider(None, settings).name]
    options = Options(
        providers=names,
        configs=_provider_configs(config, names),
        iterations=iterations or (_QUICK_ITERATIONS if quick else Options.iterations),
        warmup=warmup if warmup is not None else (1 if quick else Options.warmup),
        quick=quick,
    )
    with _ProgressBar() as bar:
        run = run_benchmark(options, bar)
    written = write_outputs(run, output)
    _print_run(run)
    for warning in written.warnings:
        _print_error(warning, prefix="warning")
    _stdout().print(f"wrote {', '.join(str(f) for f in written.files)}", soft_wrap=True)
    if run.settings.quick:
        _stdout().print(
            Text("quick run: tiny sizes, heavy steps once; not comparable with a full run", style="yellow")
        )
    if problems := run.problems:
        for problem in problems:
            _print_error(problem)
        raise typer.Exit(EXIT_ERROR)


def _percent(change: float | None) -> str:
    return "" if change is None else f"{(change - 1) * 100:+.0f}%"


@benchmark_app.command("compare")
def benchmark_compare(
    old: Annotated[Path, typer.Argument(metavar="OLD.json", exists=True, dir_okay=False, show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW.json", exists=True, dir_okay=False, show_default=False)],
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", min=0.0, help="Smallest relative change of a p50 that counts (0.1 = 10%)."
        ),
    ] = 0.10,
    min_delta_ms: Annotated[
        float,
        typer.Option("--min-delta-ms", min=0.0, help="Smallest absolute change of a p50 that counts."),
    ] = 0.2,
) -> None:
    """Compare two results.json files; exit 1 when an operation got slower beyond noise (or now fails)."""
    from grainchain.benchmark import ResultsError, compare_runs, load_run
    from grainchain.benchmark.compare import NOISE_RULE, Verdict
    from grainchain.benchmark.report import ms, ratio

    try:
        before, after = load_run(old), load_run(new)
    except ResultsError as exc:
        _fail(str(exc))
    result = compare_runs(before, after, threshold=threshold, min_delta=min_delta_ms / 1e3)
    console = _wide_stdout()
    for warning in result.warnings:
        _print_error(warning, prefix="warning")
    table = Table(title=f"{old} → {new} (p50, ms)", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("provider", "operation", "old", "new", "change", "noise band", "verdict", "vs raw"):
        table.add_column(
            header, justify="right" if header in ("old", "new", "change", "noise band") else "left"
        )
    styles = {Verdict.regression: "bold red", Verdict.broken: "bold red", Verdict.improvement: "green"}
    for row in result.rows:
        vs_raw = f"{ratio(row.old_ratio)} → {ratio(row.new_ratio)}" if row.old_ratio or row.new_ratio else ""
        table.add_row(
            row.provider,
            row.label,
            ms(row.old.p50) if row.old else "",
            ms(row.new.p50) if row.new else "",
            _percent(row.change),
            f"±{row.band * 100:.0f}%" if row.band is not None else "",
            Text(
                row.verdict.value + (f" ({row.note})" if row.note else ""), style=styles.get(row.verdict, "")
            ),
            vs_raw,
        )
    console.print(table)
    console.print(Text(NOISE_RULE, style="dim"), soft_wrap=True)
    if result.regressions:
        console.print(Text(f"{len(result.regressions)} regression(s) beyond noise", style="bold red"))
        raise typer.Exit(EXIT_ERROR)
    console.print(Text("no regression beyond noise", style="green"))


# -- entry point ------------------------------------------------------------------------------------------


# -- sandboxes, snapshots, cleanup ------------------------------------------------------------------------

# providers whose leftovers these commands know how to find (grainchain/_ownership.py)
_CLEANUP_MODULES = {
    "local": "grainchain.providers.local._cleanup",
    "docker": "grainchain.providers.docker._cleanup",
}
_ProviderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--provider",
        "-p",
        help="Only this provider (repeatable; default: local and docker).",
        show_default=False,
    ),
]
_JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _cleanup_module(provider: str) -> Any:
    if provider not in _CLEANUP_MODULES:
        raise typer.BadParameter(
            f"{provider!r}: only {', '.join(_CLEANUP_MODULES)} keep state these commands can inspect",
            param_hint="--provider",
        )
    return importlib.import_module(_CLEANUP_MODULES[provider])


def _each_provider(chosen: list[str] | None, what: Any) -> Iterator[tuple[str, Any]]:
    """(provider, what(module)) for each provider; one that is unreachable is skipped with a warning unless
    it was named."""
    for provider in chosen or list(_CLEANUP_MODULES):
        module = _cleanup_module(provider)
        try:
            yield provider, what(module)
        except GrainchainError as exc:
            if chosen:
                raise
            _print_error(f"{provider} skipped: {exc}", prefix="warning")


def _provider_of_id(sandbox_or_snapshot: str, provider: str | None) -> str:
    if provider:
        return provider
    if sandbox_or_snapshot.startswith(("local-", "snap-")):
        return "local"
    if sandbox_or_snapshot.startswith(("gc-", "grainchain-snapshot:")):
        return "docker"
    raise typer.BadParameter(f"cannot tell the provider of {sandbox_or_snapshot!r}", param_hint="--provider")


def _when(value: Any) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table_stdout() -> Console:
    """Wide enough for ids and paths when stdout is not a terminal."""
    console = _stdout()
    return console if console.is_terminal else Console(highlight=False, width=160)


_OWNER_STYLES = {"alive": "green", "dead": "red", "detached": "cyan", "unknown": "yellow"}

sandboxes_app = typer.Typer(
    help="Sandboxes in this state dir (local) and namespace (docker): list, close.",
    invoke_without_command=True,
)
app.add_typer(sandboxes_app, name="sandboxes")


@sandboxes_app.callback(invoke_without_command=True)
def sandboxes(ctx: typer.Context, provider: _ProviderOption = None, as_json: _JsonOption = False) -> None:
    """List sandboxes with their owner (the client driving them: alive, dead, detached) and whether
    `grainchain cleanup` would remove them."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    records = [
        r for _, found in _each_provider(provider, lambda m: m.sandbox_records(settings)) for r in found
    ]
    if as_json:
        rows = [
            {
                "provider": r.provider,
                "sandbox_id": r.sandbox_id,
                "status": r.status,
                "created_at": None if r.created_at is None else r.created_at.isoformat(),
                "owner_pid": None if r.owner is None else r.owner.pid,
                "owner": r.owner_state,
                "kept": r.kept,
                "reapable": r.reapable,
            }
            for r in records
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Sandboxes", title_justify="left")
    for column in ("provider", "sandbox", "status", "created", "owner pid", "owner", "kept", "cleanup"):
        table.add_column(
            column, no_wrap=True, min_width={"sandbox": 38, "owner": 8, "cleanup": 10}.get(column)
        )
    for r in records:
        table.add_row(
            r.provider,
            r.sandbox_id,
            r.status,
            _when(r.created_at),
            "" if r.owner is None else str(r.owner.pid),
            Text(r.owner_state, style=_OWNER_STYLES.get(r.owner_state, "")),
            "yes" if r.kept else "",
            Text("removes it", style="red") if r.reapable else "",
        )
    _table_stdout().print(table)


@sandboxes_app.command("close")
def sandboxes_close(
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox's id.")],
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="Its provider (default: told by the id).")
    ] = None,
) -> None:
    """Close a sandbox and delete it (its processes, files, containers), whoever owns it."""
    name = _provider_of_id(sandbox_id, provider)
    _cleanup_module(name).close_sandbox(load_settings(), sandbox_id)
    _stdout().print(f"closed {name} sandbox {sandbox_id}")


snapshots_app = typer.Typer(
    help="Snapshots of this namespace (settings `namespace`; default: one per state dir): list, delete, prune.",
    invoke_without_command=True,
)
app.add_typer(snapshots_app, name="snapshots")


def _snapshot_table(title: str, records: list[Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("provider", "snapshot", "kind", "created", "expires", "size", "source"):
        table.add_column(column, no_wrap=column != "source", min_width=40 if column == "snapshot" else None)
    for r in records:
        expires = Text(_when(r.expires_at) or "never", style="red" if _expired(r) else "")
        size = "" if r.size_bytes is None else f"{r.size_bytes / 2**20:.1f} MiB"
        table.add_row(
            r.provider, r.snapshot_id, r.kind, _when(r.created_at), expires, size, r.source_sandbox_id or ""
        )
    return table


def _expired(record: Any) -> bool:
    from grainchain._ownership import expired

    return expired(record.expires_at)


@snapshots_app.callback(invoke_without_command=True)
def snapshots(ctx: typer.Context, provider: _ProviderOption = None, as_json: _JsonOption = False) -> None:
    """List this namespace's snapshots (`snapshots list`)."""
    if ctx.invoked_subcommand is None:
        snapshots_list(provider, as_json)


@snapshots_app.command("list")
def snapshots_list(provider: _ProviderOption = None, as_json: _JsonOption = False) -> None:
    """List this namespace's snapshots, with when they expire (settings `snapshot_ttl`)."""
    from grainchain._ownership import namespace_of

    settings = load_settings()
    records = [
        r for _, found in _each_provider(provider, lambda m: m.snapshot_records(settings)) for r in found
    ]
    if as_json:
        rows = [
            {
                "provider": r.provider,
                "snapshot_id": r.snapshot_id,
                "kind": r.kind,
                "created_at": None if r.created_at is None else r.created_at.isoformat(),
                "expires_at": None if r.expires_at is None else r.expires_at.isoformat(),
                "expired": _expired(r),
                "size_bytes": r.size_bytes,
                "source_sandbox_id": r.source_sandbox_id,
            }
            for r in records
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    _table_stdout().print(_snapshot_table(f"Snapshots of namespace {namespace_of(settings)}", records))


@snapshots_app.command("delete")
def snapshots_delete(
    snapshot_id: Annotated[list[str], typer.Argument(help="Snapshot ids.")],
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="Their provider (default: told by each id).")
    ] = None,
) -> None:
    """Delete snapshots of this namespace (another namespace's are not found)."""
    settings = load_settings()
    for one in snapshot_id:
        name = _provider_of_id(one, provider)
        _cleanup_module(name).delete_snapshot(settings, one)
        _stdout().print(f"deleted {name} snapshot {one}")


@snapshots_app.command("prune")
def snapshots_prune(
    provider: _ProviderOption = None,
    expired: Annotated[
        bool, typer.Option("--expired/--no-expired", help="Delete the snapshots whose TTL has passed.")
    ] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would be deleted.")] = False,
) -> None:
    """Delete this namespace's expired snapshots (made while settings `snapshot_ttl` was set)."""
    if not expired:
        raise typer.BadParameter(
            "prune deletes expired snapshots only; nothing else to prune", param_hint="--expired"
        )
    settings = load_settings()
    found = [
        (module, r)
        for _, (module, records) in _each_provider(provider, lambda m: (m, m.expired_snapshots(settings)))
        for r in records
    ]
    _table_stdout().print(_snapshot_table("Would delete" if dry_run else "Deleting", [r for _, r in found]))
    if dry_run:
        _stdout().print(f"{len(found)} expired snapshot(s); nothing deleted (--dry-run)")
        return
    for module, record in found:
        with _suppress_not_found():
            module.delete_snapshot(settings, record.snapshot_id)
    _stdout().print(f"deleted {len(found)} expired snapshot(s)")


@contextmanager
def _suppress_not_found() -> Iterator[None]:
    from grainchain.errors import SnapshotNotFoundError

    with contextlib.suppress(SnapshotNotFoundError):  # deleted by someone else meanwhile
        yield


@app.command()
def cleanup(
    provider: _ProviderOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print what would be removed.")] = False,
    as_json: _JsonOption = False,
) -> None:
    """Remove what dead clients left behind, and only what is provably grainchain's: sandboxes whose owner
    process is gone (not detached, not keep_alive, not auto_cleanup=False) with their processes, mounts,
    cgroups and directories; abandoned staging copies and probe directories under the state dir; docker
    containers, volumes and deleted snapshots' images of this namespace whose owner is gone."""
    settings = load_settings()
    found = [
        (p, item) for p, items in _each_provider(provider, lambda m: m.leftovers(settings)) for item in items
    ]
    results: list[str] = []
    failed = 0
    for _, item in found:
        if dry_run:
            results.append("would remove")
            continue
        try:
            item.remove()
            results.append("removed")
        except (GrainchainError, OSError) as exc:
            failed += 1
            results.append(f"failed: {_one_line(str(exc))}")
    if not dry_run:
        for name in provider or list(_CLEANUP_MODULES):
            collect = getattr(_cleanup_module(name), "collect_layers", None)
            if collect is not None:
                collect(settings)
    if as_json:
        rows = [
            {"provider": i.provider, "kind": i.kind, "name": i.name, "why": i.why, "result": result}
            for (_, i), result in zip(found, results, strict=True)
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        table = Table(title="Leftovers", title_justify="left")
        for column in ("provider", "kind", "name", "why", "result"):
            table.add_column(column, no_wrap=column in ("provider", "kind"), overflow="fold")
        for (_, i), result in zip(found, results, strict=True):
            style = "yellow" if dry_run else ("green" if result == "removed" else "red")
            table.add_row(i.provider, i.kind, i.name, i.why, Text(result, style=style))
        console = _table_stdout()
        console.print(table)
        if dry_run:
            console.print(f"{len(found)} leftover(s); nothing removed (--dry-run)")
        else:
            console.print(f"removed {len(found) - failed} of {len(found)} leftover(s)")
    if failed:
        raise typer.Exit(EXIT_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command line, report errors as one line, return the exit status."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG_NAME, standalone_mode=False)
    except _UsageError as caught:
        exc = cast(_ClickError, caught)
        if type(caught).__name__ == "NoArgsIsHelpError":
            return exc.exit_code  # the help was printed already
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _print_error(exc.format_message() + hint)
        return EXIT_USAGE
    except _ClickException as caught:
        exc = cast(_ClickError, caught)
        _print_error(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        return EXIT_INTERRUPTED
    except GrainchainError as exc:
        _print_error(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        _print_error(str(exc))
        return EXIT_ERROR
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
