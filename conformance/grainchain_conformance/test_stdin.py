"""Standard input (feature exec.stdin): execute(stdin=...) byte for byte and at any size, a background
process's write_stdin / close_stdin, commands without stdin reading end of file at once, and the errors of
writing where nothing reads."""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

import pytest

from grainchain.adapters import Feature
from grainchain.errors import CommandTimeoutError, InvalidArgumentError, StdinClosedError
from grainchain_conformance.target import ConformanceTarget

# every byte value, NUL and bytes that are not UTF-8 among them
BINARY = bytes(range(256)) + b"\x00\xff\xfe\xc0\x80 not utf-8 \xed\xa0\x80\n"
BIG = 4 << 20  # bytes: far more than any pipe or stream buffer between the client and the command


@functools.cache
def _big_input() -> bytes:
    """4 MiB no compression or buffering could shortcut: a hash chain, with a NUL and a bad byte per line."""
    pieces, seed, size = [], b"grainchain", 0
    while size < BIG:
        seed = hashlib.sha256(seed).digest()
        pieces.append(seed * 8 + b"\x00\xff\n")
        size += len(pieces[-1])
    return b"".join(pieces)[:BIG]


def _same_output(result: Any, expected: bytes, what: str) -> None:
    """The command's stdout is `expected`: byte for byte where the result has the bytes, else as text."""
    raw = getattr(result, "stdout_bytes", None)
    if raw is not None:
        assert raw == expected, f"{what}: {len(raw)} bytes came back for {len(expected)}, not the same bytes"
    else:
        assert result.stdout == expected.decode("utf-8", errors="replace"), f"{what}: a different stdout"


def _wait_for(handle: Any, text: str, within: float = 20.0) -> None:
    ends = time.monotonic() + within
    while text not in handle.stdout:
        assert time.monotonic() < ends, f"{text!r} did not appear within {within} s: stdout {handle.stdout!r}"
        assert handle.is_running, f"the process ended before writing {text!r}: {handle.stdout!r}"
        time.sleep(0.05)


@pytest.mark.feature("exec.stdin")
@pytest.mark.promises("param:execute.stdin", "feature:exec.stdin")
def test_execute_feeds_stdin_byte_for_byte(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        _same_output(sandbox.execute("cat", stdin=BINARY), BINARY, "cat of every byte value")
        assert sandbox.execute("wc -c", stdin=BINARY).stdout.strip() == str(len(BINARY))
        # str is UTF-8: 'é' is two bytes
        assert sandbox.execute("wc -c", stdin="h\u00e9llo\n").stdout.strip() == "7"
        assert sandbox.execute("cat", stdin=bytearray(b"from a bytearray")).stdout == "from a bytearray"
        assert sandbox.execute("cat", stdin=memoryview(b"from a memoryview")).stdout == "from a memoryview"
        # the input ends: a program reading line by line sees each line, then end of file
        result = sandbox.execute(
            'n=0; while read -r line; do n=$((n+1)); echo "$n:$line"; done; echo "eof after $n"',
            stdin="first\nsecond\nthird\n",
        )
        assert result.stdout == "1:first\n2:second\n3:third\neof after 3\n", result.stdout
        assert sandbox.execute('read -r a; read -r b; echo "$b-$a"', stdin="x\ny\n").stdout == "y-x\n"
        assert sandbox.execute("cat", stdin=b"").stdout == "", "empty input: end of file at once"


@pytest.mark.feature("exec.stdin")
@pytest.mark.promises("param:execute.stdin")
def test_large_input_does_not_deadlock(conformance: ConformanceTarget) -> None:
    data = _big_input()
    with conformance.sandbox() as sandbox:
        # cat writes while it reads: the input and the output must both flow at once
        _same_output(sandbox.execute("cat", stdin=data, timeout=120), data, "cat of 4 MiB")
        assert sandbox.execute("wc -c", stdin=data, timeout=120).stdout.strip() == str(BIG)
        # a command that reads only the start, or nothing, ends the call as soon as it ends
        started = time.monotonic()
        assert sandbox.execute("head -c 5 | wc -c", stdin=data, timeout=120).stdout.strip() == "5"
        assert sandbox.execute("echo reads-nothing", stdin=data, timeout=120).stdout == "reads-nothing\n"
        assert time.monotonic() - started < 60
        # one that never reads and never ends times out on time, its input notwithstanding
        started = time.monotonic()
        with pytest.raises(CommandTimeoutError):
            sandbox.execute("echo started; sleep 60", stdin=data, timeout=2)
        assert time.monotonic() - started < 20, "the unread input held the call past its timeout"
        assert sandbox.execute("echo still-usable").stdout == "still-usable\n"


@pytest.mark.feature("exec")
@pytest.mark.promises("param:execute.stdin")
def test_a_command_without_stdin_reads_end_of_file_at_once(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        started = time.monotonic()
        assert sandbox.execute("cat; echo done", timeout=30).stdout == "done\n"
        result = sandbox.execute('read -r line; echo "read:$?:$line"', timeout=30)
        assert result.stdout.startswith("read:1:"), f"read found input: {result.stdout!r}"
        if conformance.supports(Feature.PROCESS_BACKGROUND):
            handle = sandbox.start_process("cat; echo done")
            assert handle.wait(timeout=30).stdout == "done\n"
        assert time.monotonic() - started < 30, "a command without stdin waited for input"


@pytest.mark.feature("exec.stdin", "process.background")
@pytest.mark.promises("param:start_process.stdin", "feature:exec.stdin")
def test_a_background_process_reads_what_the_handle_writes(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        handle = sandbox.start_process("cat", stdin=True)
        handle.write_stdin("one\n")
        _wait_for(handle, "one\n")  # written now, not when stdin closes
        assert handle.is_running, "cat ended before its stdin was closed"
        handle.write_stdin(b"two\x00\xff\n")
        handle.close_stdin()
        handle.close_stdin()  # idempotent
        result = handle.wait(timeout=30)
        assert result.return_code == 0
        _same_output(result, b"one\ntwo\x00\xff\n", "a background cat")

        # a dialogue: each answer comes before the next question is written
        talker = sandbox.start_process('while read -r q; do echo "answer:$q"; done; echo bye', stdin=True)
        for question in ("a", "b", "c"):
            talker.write_stdin(f"{question}\n")
            _wait_for(talker, f"answer:{question}\n")
        talker.close_stdin()
        assert talker.wait(timeout=30).stdout == "answer:a\nanswer:b\nanswer:c\nbye\n"

        # a large write to a process that reads it all
        data = _big_input()
        counter = sandbox.start_process("wc -c", stdin=True)
        counter.write_stdin(data)
        counter.close_stdin()
        assert counter.wait(timeout=120).stdout.strip() == str(BIG)


@pytest.mark.feature("exec.stdin", "process.background")
@pytest.mark.promises("param:start_process.stdin")
def test_writing_where_nothing_reads_raises_stdin_closed(conformance: ConformanceTarget) -> None:
    with conformance.sandbox() as sandbox:
        without = sandbox.start_process("sleep 30")
        with pytest.raises(StdinClosedError):
            without.write_stdin("x")  # started without stdin=True
        without.kill()

        closed = sandbox.start_process("sleep 30", stdin=True)
        closed.close_stdin()
        with pytest.raises(StdinClosedError):
            closed.write_stdin("x")  # after close_stdin()
        closed.kill()

        ended = sandbox.start_process("read -r line; echo got:$line", stdin=True)
        ended.write_stdin("only\n")
        assert ended.wait(timeout=30).stdout == "got:only\n"
        with pytest.raises(StdinClosedError):
            ended.write_stdin("x")  # the process has ended
        ended.close_stdin()  # fine once it has ended

        with pytest.raises(InvalidArgumentError):
            sandbox.execute("cat", stdin=42)
        with pytest.raises(InvalidArgumentError):
            sandbox.start_process("cat", stdin="yes")
        typed = sandbox.start_process("cat", stdin=True)
        with pytest.raises(InvalidArgumentError):
            typed.write_stdin(42)
        typed.close_stdin()
        assert typed.wait(timeout=30).return_code == 0
        assert sandbox.execute("echo still-usable").stdout == "still-usable\n"
