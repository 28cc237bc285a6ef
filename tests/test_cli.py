"""The `grainchain` command, run as the installed console script in a subprocess.

The autouse fixtures of conftest.py point GRAINCHAIN_STATE_DIR at a temporary directory and GRAINCHAIN_CONFIG
at a missing file in os.environ, which every call here passes on; they also fail a test that leaves sandbox
processes behind, so each test checks that the command cleaned up after itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _support import grainchain_script

import grainchain
from spec.validate import load_spec
from tests.providers import memory

ALL_PROVIDERS = {"local", "docker", "e2b", "morph", "daytona", "modal"}


def grainchain_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grainchain_script(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with `code` and said why in exactly one line on stderr, without a traceback."""
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- run --------------------------------------------------------------------------------------------------


def test_run_prints_the_output_and_exits_zero() -> None:
    result = grainchain_cli("run", "--", "python3", "-c", "print(6*7)")
    assert (result.returncode, result.stdout, result.stderr) == (0, "42\n", "")


def test_run_passes_the_exit_code_through_and_keeps_stderr_apart() -> None:
    result = grainchain_cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_run_reports_death_by_signal_as_128_plus_n() -> None:
    assert grainchain_cli("run", "--", "sh", "-c", "kill -9 $$").returncode == 128 + 9


def test_run_without_double_dash_passes_the_command_options_through() -> None:
    result = grainchain_cli("run", "python3", "-c", "import sys; print(sys.argv[1:])", "-h", "--x")
    assert (result.returncode, result.stdout) == (0, "['-h', '--x']\n")


def test_run_sets_environment_and_working_directory() -> None:
    result = grainchain_cli(
        "run", "--env", "GREETING=hello there", "-e", "EQ=a=b", "--workdir", "sub/dir", "--",
        "sh", "-c", 'echo "$GREETING|$EQ"; pwd',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    greeting, cwd = result.stdout.splitlines()
    assert greeting == "hello there|a=b"
    assert cwd.endswith("/sub/dir")


def test_run_takes_a_config_as_json_and_an_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# a comment, then a blank line\n\n"
        "PLAIN=one\n"
        'export QUOTED="two words"  # trailing comment\n'
        "SINGLE='$NOT_EXPANDED'\n"
        "EXPANDED=${PLAIN}-x\n"
        "OVERRIDDEN=from the file\n"
        "EMPTY=\n"
    )
    config = {"environment_vars": {"FROM_CONFIG": "c", "PLAIN": "loses"}, "working_directory": "proj"}
    result = grainchain_cli(
        "run", "--config", json.dumps(config), "--env-file", str(env_file), "-e", "OVERRIDDEN=from --env",
        "--", "sh", "-c", 'echo "$FROM_CONFIG|$PLAIN|$QUOTED|$SINGLE|$EXPANDED|$OVERRIDDEN|${EMPTY-unset}"; pwd',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    values, cwd = result.stdout.splitlines()
    assert values == "c|one|two words|$NOT_EXPANDED|one-x|from --env|"
    assert cwd.endswith("/proj")  # the config's working_directory


def test_run_image_is_the_sandbox_config_image() -> None:
    # local has no images: the refusal proves --image reached SandboxConfig.image
    line = assert_one_line_error(grainchain_cli("run", "--image", "alpine:3", "--", "true"), 1)
    assert "image.custom" in line
    assert "SandboxConfig.image" in line


def test_run_image_on_docker() -> None:
    from tests.test_docker import IMAGE  # skips this test without an engine

    result = grainchain_cli("run", "-p", "docker", "--image", IMAGE, "--", "sh", "-c", "busybox | head -1")
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith("BusyBox")


@pytest.mark.parametrize("workdir", ["/tmp", "/workspace/abs/dir", "rel/dir", "..", "/etc/no-such-dir"])
def test_run_workdir_follows_the_api_s_path_rules(workdir: str) -> None:
    """--workdir is execute's working_dir (made first with make_directory): the CLI succeeds where the API
    does, and fails with the API's own error where it refuses."""
    from grainchain.sync import Sandbox

    try:
        with Sandbox("local") as sandbox:
            sandbox.make_directory(workdir)
            expected: str | None = sandbox.execute("pwd", working_dir=workdir).stdout
    except grainchain.GrainchainError as exc:
        expected, error = None, exc.message
    result = grainchain_cli("run", "--workdir", workdir, "--", "pwd")
    if expected is None:
        line = assert_one_line_error(result, 1)
        assert error in line
    else:
        assert (result.returncode, result.stdout) == (0, expected), result


def test_run_streams_output_while_the_command_runs() -> None:
    with subprocess.Popen(
        [grainchain_script(), "run", "--", "sh", "-c", "echo first; sleep 1; echo second"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        assert proc.poll() is None, "the first line arrived only when the command had ended"
        rest, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, rest, stderr) == (0, "second\n", "")


def test_run_timeout_kills_the_command_and_exits_124() -> None:
    started = time.monotonic()
    result = grainchain_cli("run", "--timeout", "1", "--", "sleep", "30")
    assert time.monotonic() - started < 5
    assert "timed out after 1s" in assert_one_line_error(result, 124)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + 15)])
def test_run_cleans_up_when_interrupted(signum: int, code: int) -> None:
    with subprocess.Popen(
        [grainchain_script(), "run", "--", "sh", "-c", "echo started; sleep 30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signum)
        # a hang guard, not a speed target: closing after an interrupt waits for the holder's pid namespace,
        # which waits for the interrupted command's zombie to be reaped by this VM's init (up to 5 s at times;
        # issue 14 owns that wait)
        assert proc.wait(timeout=30) == code
        _, stderr = proc.communicate()
    assert b"Traceback" not in stderr  # no_leftover_processes checks that `sleep 30` is gone


def test_run_stops_when_its_reader_goes_away() -> None:
    with subprocess.Popen(
        [grainchain_script(), "run", "--", "yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"y\n"
        proc.stdout.close()
        assert proc.wait(timeout=10) == 128 + 13  # as if killed by SIGPIPE
        _, stderr = proc.communicate()
    assert stderr == b""


# -- errors -----------------------------------------------------------------------------------------------


def test_unknown_provider_is_a_usage_error_naming_the_known_ones() -> None:
    line = assert_one_line_error(grainchain_cli("run", "--provider", "nope", "--", "true"), 2)
    assert "unknown provider 'nope'" in line
    assert all(name in line for name in ALL_PROVIDERS)


def test_bad_default_provider_from_the_environment_is_a_clear_error() -> None:
    result = grainchain_cli("run", "--", "true", env={"GRAINCHAIN_DEFAULT_PROVIDER": "nope"})
    line = assert_one_line_error(result, 1)
    assert "unknown provider 'nope'" in line
    assert "GRAINCHAIN_DEFAULT_PROVIDER" in line
    assert "local" in line


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('default_provider = "local"\n[sandbox]\ntimeout = -1\n')
    line = assert_one_line_error(
        grainchain_cli("run", "--", "true", env={"GRAINCHAIN_CONFIG": str(config)}), 1
    )
    assert str(config) in line
    assert "timeout" in line


def test_planned_provider_says_it_has_no_adapter() -> None:
    line = assert_one_line_error(grainchain_cli("run", "--provider", "morph", "--", "true"), 1)
    assert "planned" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run"], "Missing argument"),
        (["run", "--env", "NOVALUE", "--", "true"], "expected KEY=VALUE, got 'NOVALUE'"),
        (["run", "--env", "1BAD=x", "--", "true"], "'1BAD' is not a valid variable name"),
        (["run", "--timeout", "0", "--", "true"], "must be a positive number"),
        (["run", "--timeout", "soon", "--", "true"], "--timeout"),
        (["run", "--timeout", "1e10", "--", "true"], "up to 604800"),  # execute's own rule
        (["run", "--bogus", "--", "true"], "No such option: --bogus"),
        (["run", "--config", "{", "--", "true"], "'--config': not valid JSON"),
        (["run", "--config", "[1]", "--", "true"], "expected a JSON object of SandboxConfig fields"),
        (["run", "--config", '{"timeout": -1}', "--", "true"], "timeout: timeout must be a positive"),
        (["run", "--config", '{"memory_limit": "lots"}', "--", "true"], "memory_limit: cannot read 'lots'"),
        (["run", "--config", '{"nope": 1}', "--", "true"], "nope: Extra inputs are not permitted"),
        (["run", "--image", "", "--", "true"], "image must be a non-empty string"),
        (["run", "--env-file", "/no/such/file.env", "--", "true"], "cannot read /no/such/file.env"),
        (["launch"], "No such command 'launch'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args: list[str], expected: str) -> None:
    assert expected in assert_one_line_error(grainchain_cli(*args), 2)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("A=1\nnot a pair\n", "line 2: expected KEY=VALUE, got 'not a pair'"),
        ("# ok\n1BAD=x\n", "line 2: '1BAD' is not a valid variable name"),
        ("A=1\n\nLONELY\n", "line 3: LONELY has no value (write LONELY= for an empty one)"),
    ],
)
def test_env_file_errors_name_the_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text(content)
    line = assert_one_line_error(grainchain_cli("run", "--env-file", str(env_file), "--", "true"), 2)
    assert f"{env_file}, {expected}" in line


# -- providers --------------------------------------------------------------------------------------------


def test_providers_table_lists_every_provider() -> None:
    result = grainchain_cli("providers")
    assert result.returncode == 0, result.stderr
    assert all(re.search(rf"\b{name}\b", result.stdout) for name in ALL_PROVIDERS), result.stdout
    assert "available" in result.stdout
    assert "planned" in result.stdout
    assert "exec.streaming" in result.stdout


def test_providers_json(tmp_path: Path) -> None:
    result = grainchain_cli(
        "providers", "--json", env={"E2B_API_KEY": "", "MODAL_TOKEN_ID": "x", "MODAL_TOKEN_SECRET": ""}
    )
    assert result.returncode == 0, result.stderr
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert set(records) == ALL_PROVIDERS
    local = records["local"]
    assert (local["status"], local["installed"], local["configured"], local["default"]) == (
        "available",
        True,
        True,
        True,
    )
    assert local["features"]["exec"] == "native"
    assert local["features"]["image.custom"] == "unsupported"
    assert records["e2b"]["status"] == "available"
    assert records["e2b"]["missing_credentials"] == ["E2B_API_KEY"]  # empty counts as missing
    assert records["morph"]["status"] == "planned"
    assert records["modal"]["missing_credentials"] == ["MODAL_TOKEN_SECRET"]


FAKE_OLD_CRIU = """#!/bin/sh
case "$1" in --version) echo "Version: 3.17.1";; *) echo "too old" >&2; exit 1;; esac
"""


def test_providers_shows_what_this_machine_lacks_beside_the_declaration(tmp_path: Path) -> None:
    """Debian 12's CRIU 3.17 cannot dump on current kernels: local declares memory snapshots, and this
    machine narrows them to unsupported, with the reason, in both the table and the JSON."""
    (tmp_path / "criu").write_text(FAKE_OLD_CRIU)
    (tmp_path / "criu").chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    records = {r["name"]: r for r in json.loads(grainchain_cli("providers", "--json", env=env).stdout)}
    local = records["local"]
    assert local["features"]["snapshot.memory"] == "native", "the declaration stays as declared"
    assert set(local["missing_here"]) == {"snapshot.memory"}, local["missing_here"]
    if os.geteuid() == 0:
        assert "criu 3.17" in local["missing_here"]["snapshot.memory"]
    assert records["morph"]["missing_here"] is None, "a planned provider is not probed"
    table = grainchain_cli("providers", env=env).stdout
    row = next(line for line in table.splitlines() if "snapshot.memory" in line and "│" in line)
    assert "✓→✗" in row, table
    assert "local snapshot.memory: " in table, table


def test_providers_lists_a_provider_registered_at_run_time() -> None:
    # the memory test provider, registered with registry.register() as the command's process starts
    env = memory.subprocess_env({"exec": "native", "files": "emulated"}, summary="registered at run time")
    records = {r["name"]: r for r in json.loads(grainchain_cli("providers", "--json", env=env).stdout)}
    assert set(records) == ALL_PROVIDERS | {"memory"}
    assert (records["memory"]["status"], records["memory"]["installed"]) == ("available", True)
    assert records["memory"]["features"]["files"] == "emulated"
    assert records["memory"]["features"]["snapshot.filesystem"] == "unsupported"
    table = grainchain_cli("providers", env=env)
    assert table.returncode == 0, table.stderr
    assert re.search(r"\bmemory\b", table.stdout), table.stdout


# -- spec -------------------------------------------------------------------------------------------------


def test_spec_show_prints_the_spec_it_was_generated_from() -> None:
    result = grainchain_cli("spec", "show")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == load_spec()


# -- entry points -----------------------------------------------------------------------------------------


def test_version() -> None:
    result = grainchain_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"grainchain {grainchain.__version__}\n")


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grainchain", "run", "--", "python3", "-c", "print(6*7)"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "42\n")


def test_importing_grainchain_does_not_load_the_cli() -> None:
    code = "import sys, grainchain, grainchain.sync; print(sorted({'grainchain.cli', 'typer', 'rich'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
