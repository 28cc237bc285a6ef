"""Commands: exit codes over their whole domain and signals, output decoding, the result's fields, timeouts
against the config's default, working directories that do not exist or lead out, environment precedence,
the output cap on stdout plus stderr."""

from __future__ import annotations

import time

import pytest

from grainchain.adapters import Feature
from grainchain.errors import (
    CommandTimeoutError,
    FileNotFoundInSandboxError,
    OutputLimitExceededError,
)
from grainchain_conformance import inside
from grainchain_conformance.target import ConformanceTarget

# every boundary of the exit status byte: 0, 1, the shell's own codes (126 not executable, 127 not found),
# 128 and the signal range above it, 255
EXIT_CODES = [0, 1, 2, 63, 64, 125, 126, 127, 128, 129, 130, 137, 143, 200, 254, 255]
# signals whose default action ends a process and that nobody ignores by inheritance: a command started under
# nohup has SIGHUP ignored, a background job of a shell SIGINT and SIGQUIT, docker exec's shells SIGQUIT
SIGNALS = [6, 9, 10, 12, 14, 15]


@pytest.mark.feature("exec")
@pytest.mark.promises("convention:exit_codes", "field:ExecutionResult.return_code", "op:execute")
def test_exit_codes_over_the_whole_byte_and_signals(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        for code in EXIT_CODES:
            result = sandbox.execute(f"exit {code}")
            assert result.return_code == code, f"exit {code} reported as {result.return_code}"
            assert result.success is (code == 0)
        for number in SIGNALS:
            result = sandbox.execute(f"echo before; kill -{number} $$; sleep 5")
            assert (result.return_code, result.stdout) == (128 + number, "before\n"), f"signal {number}"
        assert sandbox.execute("no-such-command-gc").return_code == 127
        assert sandbox.execute("echo 'exit 3' > s.sh; chmod 644 s.sh; ./s.sh").return_code == 126


@pytest.mark.feature("exec")
@pytest.mark.promises(
    "field:ExecutionResult.command",
    "field:ExecutionResult.stdout",
    "field:ExecutionResult.stderr",
    "field:ExecutionResult.execution_time",
    "feature:exec",
)
def test_result_fields_say_what_ran(conformance: ConformanceTarget) -> None:
    command = "printf 'a\\377\\376b\\n'; printf '\\300x\\n' >&2; sleep 0.6"
    with conformance.sandbox() as sandbox:
        started = time.monotonic()
        result = sandbox.execute(command)
        elapsed = time.monotonic() - started
    assert result.command == command
    assert result.stdout == "a\ufffd\ufffdb\n", "invalid UTF-8 must become U+FFFD, valid text stays"
    assert result.stderr == "\ufffdx\n"
    assert 0.6 <= result.execution_time <= elapsed + 0.05, (
        f"execution_time {result.execution_time:.3f} s for a 0.6 s command that took {elapsed:.3f} s to call"
    )


@pytest.mark.feature("exec")
@pytest.mark.promises("param:execute.timeout", "config:timeout", "raises:execute.CommandTimeoutError")
def test_a_call_timeout_replaces_the_config_default(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(timeout=1) as sandbox:
        assert sandbox.execute("sleep 2; echo done", timeout=10).stdout == "done\n", "a longer call timeout"
        with pytest.raises(CommandTimeoutError) as info:
            sandbox.execute("echo started; sleep 10", timeout=0.5)
        assert info.value.timeout == 0.5
        assert info.value.stdout == "started\n"
    with conformance.sandbox(timeout=None) as sandbox:
        assert sandbox.execute("sleep 1.5; echo waited").stdout == "waited\n", "timeout=None waits"


@pytest.mark.feature("exec")
@pytest.mark.promises("param:execute.timeout", "convention:processes", "raises:execute.CommandTimeoutError")
def test_a_timeout_ends_everything_the_command_started(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        size = inside.family_size(sandbox)
        with pytest.raises(CommandTimeoutError) as info:
            sandbox.execute(inside.FAMILY.format(pids="pids") + "; echo not-killed", timeout=3)
        assert "family-started" in info.value.stdout
        inside.wait_for_lines(sandbox, "pids", size, within=1)  # all started before the timeout
        left = inside.survivors(sandbox, "pids")
        assert left == "", f"the timeout left processes of the command running: {left.split()}"


@pytest.mark.feature("exec")
@pytest.mark.promises(
    "param:execute.working_dir",
    "raises:execute.FileNotFoundInSandboxError",
    "config:working_directory",
)
def test_working_dir_must_exist_and_goes_where_cd_goes(conformance: ConformanceTarget) -> None:
    """working_dir is any directory a command could `cd` to: above the start (`..`), and /tmp too."""
    with conformance.sandbox() as sandbox:
        sandbox.execute("mkdir -p real/inner")
        with pytest.raises(FileNotFoundInSandboxError):
            sandbox.execute("echo ran > ran-here", working_dir="no-such-dir")
        with pytest.raises(FileNotFoundInSandboxError):
            sandbox.execute("true", working_dir="real/no-such-inner")
        assert sandbox.execute("test -e ran-here").return_code != 0, "the command ran anyway"
        start = sandbox.execute("pwd").stdout.strip()
        for working_dir in ("real/../..", "/tmp", "/"):
            shown = sandbox.execute("pwd", working_dir=working_dir).stdout.strip()
            expected = sandbox.execute(f"cd {working_dir} && pwd").stdout.strip()
            assert shown == expected, (
                f"working_dir {working_dir} from {start} ran in {shown}, `cd` goes to {expected}"
            )


@pytest.mark.feature("exec")
@pytest.mark.promises(
    "convention:environment",
    "param:execute.environment",
    "config:environment_vars",
)
def test_the_call_environment_wins_over_the_config(conformance: ConformanceTarget) -> None:
    config_env = {"GC_BOTH": "from config", "GC_CONFIG_ONLY": "config only", "GC_EMPTY": "not empty"}
    with conformance.sandbox(environment_vars=config_env) as sandbox:
        shown = 'printf "%s|%s|%s|%s" "$GC_BOTH" "$GC_CONFIG_ONLY" "$GC_CALL_ONLY" "${GC_EMPTY-unset}"'
        call_env = {"GC_BOTH": "from the call", "GC_CALL_ONLY": "call only", "GC_EMPTY": ""}
        result = sandbox.execute(shown, environment=call_env)
        assert result.stdout == "from the call|config only|call only|"
        assert sandbox.execute(shown).stdout == "from config|config only||not empty", "a call leaked"
        if conformance.supports(Feature.PROCESS_BACKGROUND):
            handle = sandbox.start_process(shown, environment=call_env)
            assert handle.wait(timeout=30).stdout == "from the call|config only|call only|"


@pytest.mark.feature("exec")
@pytest.mark.promises("config:output_limit", "raises:execute.OutputLimitExceededError")
def test_the_output_limit_counts_stdout_plus_stderr(conformance: ConformanceTarget) -> None:
    with conformance.sandbox(output_limit="64KB") as sandbox:
        fits = sandbox.execute("head -c 30000 /dev/zero; head -c 30000 /dev/zero >&2")
        assert (len(fits.stdout), len(fits.stderr)) == (30000, 30000)
        with pytest.raises(OutputLimitExceededError):  # each half alone fits, together they do not
            sandbox.execute("head -c 40000 /dev/zero; head -c 40000 /dev/zero >&2", timeout=30)
        with pytest.raises(OutputLimitExceededError):
            sandbox.execute("head -c 70000 /dev/zero >&2", timeout=30)
        assert sandbox.execute("echo usable").stdout == "usable\n"


# bytes no text holds: invalid UTF-8 and a NUL (convention:output)
BINARY = "printf '\\377\\376abc\\000x'"
RAW = b"\xff\xfeabc\x00x"
RAW_TEXT = "\ufffd\ufffdabc\x00x"


@pytest.mark.feature("exec")
@pytest.mark.promises(
    "convention:output",
    "field:ExecutionResult.stdout_bytes",
    "field:ExecutionResult.stderr_bytes",
    "raises:execute.CommandTimeoutError",
)
def test_output_is_the_bytes_written_and_their_text(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        result = sandbox.execute(f"{BINARY}; {BINARY} >&2; printf 'h\\303\\251'")
        assert result.stdout_bytes == RAW + b"h\xc3\xa9", "stdout_bytes must be exactly what was written"
        assert result.stderr_bytes == RAW, "stderr_bytes must be exactly what was written"
        assert (result.stdout, result.stderr) == (RAW_TEXT + "h\u00e9", RAW_TEXT), "the text stays as it was"
        # a character whose two bytes arrive in two chunks is decoded whole
        split = sandbox.execute("printf '\\303'; sleep 0.3; printf '\\251'")
        assert (split.stdout, split.stdout_bytes) == ("\u00e9", b"\xc3\xa9")
        with pytest.raises(CommandTimeoutError) as info:
            sandbox.execute(f"{BINARY}; {BINARY} >&2; sleep 10", timeout=1.5)
        assert (info.value.stdout_bytes, info.value.stderr_bytes) == (RAW, RAW), "the bytes so far"
        assert (info.value.stdout, info.value.stderr) == (RAW_TEXT, RAW_TEXT)


@pytest.mark.feature("exec")
@pytest.mark.promises("convention:output", "config:output_limit", "raises:execute.OutputLimitExceededError")
def test_the_output_limit_counts_the_bytes_once(conformance: ConformanceTarget) -> None:
    """600 bytes of 0xff are 600 bytes (decoded, 600 U+FFFD would be 1800 bytes of UTF-8; counted as bytes
    and as text, 1200): they fit a 1000-byte cap; twice as much does not, and the error carries the bytes
    that fitted. Written in 12 pieces, so that a cap counting wrongly sees its total before the end."""
    ff = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do head -c 50 /dev/zero | tr '\\0' '\\377'; sleep 0.05; done"
    with conformance.sandbox(output_limit=1000) as sandbox:
        fits = sandbox.execute(ff)
        assert fits.stdout_bytes == b"\xff" * 600
        assert fits.stdout == "\ufffd" * 600
        with pytest.raises(OutputLimitExceededError) as info:
            sandbox.execute(f"{ff}; {ff} >&2; sleep 10", timeout=30)
        out, err = info.value.stdout_bytes, info.value.stderr_bytes
        assert out is not None, "the error carries the bytes that fitted"
        assert err is not None, "the error carries the bytes that fitted"
        assert 600 <= len(out) + len(err) <= 1000, (len(out), len(err))
        assert set(out + err) == {0xFF}
        assert info.value.stdout == out.decode(errors="replace")
