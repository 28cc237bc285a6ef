"""Lying providers written blind: without reading the conformance suite, from the spec
(spec/grainchain.yaml) and docs/writing-a-provider.md only.

Each BlindLiar is the local provider with one realistic bug. `methods` is the body of the async liar class
(indented for the class body, as the template places it); the sync class gets the same text with every
`async ` / `await ` removed. `probe` is the body of `def probe(Sandbox, name) -> bool` returning True when
the lie shows (False on an honest local copy); it builds the SandboxConfig given in `config` itself
(keep_alive_detach_kills adds keep_alive=True for its own sandbox only).
tests/blind_liars_probe.py installs them and confirms every lie.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlindLiar:
    name: str  # [a-z0-9_]+, unique, not "honest"
    lie: str  # one sentence: what promise is broken and how
    methods: str  # async adapter methods, class-body indented
    probe: str  # body of def probe(Sandbox, name) -> bool
    imports: str = ""  # extra import lines for the module
    config: str = '{"provider_config": {"isolation": "none"}}'  # SandboxConfig JSON for probe and suite


BLIND_LIARS: list[BlindLiar] = [
    # ------------------------------------------------------------------------------------------ exec
    BlindLiar(
        name="exit_127_as_1",
        lie=(
            "return_code is the command's exit status as the shell reports it; this adapter folds the "
            "shell's 126 (not executable) and 127 (command not found) into a generic 1"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        result = await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=environment,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
        if result.return_code in (126, 127):  # "failed to start": reported like any failure
            return result.model_copy(update={"return_code": 1})
        return result
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    missing = s.execute("no_such_command_blind_xyz").return_code
    s.execute("printf 'echo hi' > script.sh && chmod 644 script.sh")
    not_executable = s.execute("./script.sh").return_code
    return (missing, not_executable) != (127, 126)
""",
    ),
    BlindLiar(
        name="signal_code_negative",
        lie=(
            "a command killed by signal N returns 128+N; this adapter reports statuses 129-159 the way "
            "subprocess.Popen does, as -N"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        result = await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=environment,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
        if 128 < result.return_code < 160:  # "killed by a signal": Popen's convention
            return result.model_copy(update={"return_code": 128 - result.return_code})
        return result
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    return s.execute("kill -TERM $$").return_code != 143
""",
    ),
    BlindLiar(
        name="utf8_invalid_dropped",
        lie=(
            "stdout and stderr are decoded as UTF-8 with invalid bytes replaced by U+FFFD; this adapter "
            "decodes with errors='ignore', silently dropping them"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        result = await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=environment,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
        return result.model_copy(
            update={"stdout": result.stdout.replace("\ufffd", ""), "stderr": result.stderr.replace("\ufffd", "")}
        )
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    r = s.execute(r"printf 'a\377b'; printf 'c\376d' >&2")
    return (r.stdout, r.stderr) != ("a\ufffdb", "c\ufffdd")
""",
    ),
    BlindLiar(
        name="timeout_call_capped_by_config",
        lie=(
            "a call's own timeout replaces SandboxConfig.timeout whether longer or shorter; this adapter "
            "takes the smaller of the two, so a longer per-call timeout is cut short by the default"
        ),
        methods=r"""
    def command_timeout(self, timeout):
        default = self.config.timeout
        if timeout is None or default is None:
            return default if timeout is None else timeout
        return min(timeout, default)  # "never wait longer than the sandbox allows"
""",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import CommandTimeoutError
with Sandbox(name, SandboxConfig(timeout=3, provider_config={"isolation": "none"})) as s:
    try:
        r = s.execute("sleep 3.5; echo done", timeout=30)
    except CommandTimeoutError:
        return True
    return r.stdout != "done\n"
""",
        config='{"timeout": 3, "provider_config": {"isolation": "none"}}',
    ),
    BlindLiar(
        name="async_only_stderr_dropped",
        lie=(
            "execute returns the command's stderr; the async adapter of this provider drops it (always "
            "empty) while its sync twin is right"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        result = await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=environment,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
        if isinstance(self, AsyncLocalAdapter):  # the hand-written async path forgot stderr
            return result.model_copy(update={"stderr": ""})
        return result
""",
        probe=r"""
import asyncio
from grainchain import Sandbox as AsyncSandbox, SandboxConfig

async def main():
    async with AsyncSandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
        r = await s.execute("echo oops >&2")
        return r.stderr != "oops\n"

return asyncio.run(main())
""",
    ),
    # ----------------------------------------------------------------------- working dir, environment
    BlindLiar(
        name="working_dir_cd_prefix",
        lie=(
            "a working_dir that does not exist raises FileNotFoundInSandboxError; this adapter "
            "implements working_dir as `cd DIR && command`, which then runs nothing and exits 2"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        if working_dir is None:
            return await super().execute(
                command=command, timeout=timeout, environment=environment, on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
        result = await super().execute(
            command="cd -- " + shlex.quote(working_dir) + " && " + command, timeout=timeout,
            environment=environment, on_stdout=on_stdout, on_stderr=on_stderr,
        )
        return result.model_copy(update={"command": command})
""",
        imports="import shlex",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import FileNotFoundInSandboxError
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    try:
        s.execute("pwd", working_dir="no-such-dir")
    except FileNotFoundInSandboxError:
        return False
    return True
""",
    ),
    BlindLiar(
        name="env_config_wins",
        lie=(
            "where SandboxConfig.environment_vars and a call's environment name the same variable the "
            "call's value wins; this adapter applies the config last, so the config's value wins"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        merged = dict(environment or {})
        merged.update(self.config.environment_vars)  # the sandbox's settings are authoritative
        return await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=merged,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
""",
        probe=r"""
from grainchain import SandboxConfig
cfg = SandboxConfig(environment_vars={"GREETING": "config"}, provider_config={"isolation": "none"})
with Sandbox(name, cfg) as s:
    return s.execute('echo "$GREETING"', environment={"GREETING": "call"}).stdout != "call\n"
""",
        config='{"environment_vars": {"GREETING": "config"}, "provider_config": {"isolation": "none"}}',
    ),
    BlindLiar(
        name="env_empty_value_dropped",
        lie=(
            "a call's environment sets each variable, the empty string included, over "
            "SandboxConfig.environment_vars; this adapter drops empty values, so the variable stays unset "
            "or keeps the config's value"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        cleaned = {key: value for key, value in (environment or {}).items() if value}
        return await super().execute(
            command=command, timeout=timeout, working_dir=working_dir, environment=cleaned,
            on_stdout=on_stdout, on_stderr=on_stderr,
        )
""",
        probe=r"""
from grainchain import SandboxConfig
cfg = SandboxConfig(environment_vars={"MODE": "config"}, provider_config={"isolation": "none"})
with Sandbox(name, cfg) as s:
    r = s.execute('echo "[${MODE-unset}][${FRESH-unset}]"', environment={"MODE": "", "FRESH": ""})
    return r.stdout != "[][]\n"
""",
        config='{"environment_vars": {"MODE": "config"}, "provider_config": {"isolation": "none"}}',
    ),
    # ------------------------------------------------------------------------------------- streaming
    BlindLiar(
        name="streaming_split_utf8",
        lie=(
            "on_stdout/on_stderr get decoded chunks of the output; this adapter decodes every 4 KiB block "
            "of bytes on its own, so a character split across blocks reaches the callback as U+FFFD"
        ),
        methods=r"""
    async def execute(self, command, timeout=None, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=None):
        def blockwise(callback):
            if callback is None:
                return None
            pending = bytearray()

            def feed(text, final=False):
                pending.extend(text.encode("utf-8"))
                while len(pending) >= 4096 or (final and pending):
                    block = bytes(pending[:4096])
                    del pending[:4096]
                    callback(block.decode("utf-8", "replace"))

            return feed

        out, err = blockwise(on_stdout), blockwise(on_stderr)
        try:
            return await super().execute(
                command=command, timeout=timeout, working_dir=working_dir, environment=environment,
                on_stdout=out, on_stderr=err,
            )
        finally:
            for feed in (out, err):
                if feed is not None:
                    feed("", final=True)
""",
        probe=r'''
from grainchain import SandboxConfig
chunks = []
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    r = s.execute("""python3 -c "import sys; sys.stdout.write('a' + '\u00e9' * 5000)" """, on_stdout=chunks.append)
    return "".join(chunks) != r.stdout or "\ufffd" in "".join(chunks)
''',
    ),
    # --------------------------------------------------------------------------- background processes
    BlindLiar(
        name="bg_kill_leaves_grandchild",
        lie=(
            "kill() of a background process ends it and everything it started; this adapter signals only "
            "the process itself, so its children (`cmd &`) keep running"
        ),
        methods=r"""
    async def start_process(self, command, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=False):
        handle = await super().start_process(
            command=command, working_dir=working_dir, environment=environment, on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        pid = handle.pid  # (isolation none: the host pid)

        async def _signal():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        handle._signal = _signal
        return handle
""",
        imports="import os\nimport signal",
        probe=r"""
import time
from grainchain import SandboxConfig

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False

with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    p = s.start_process("sleep 60 & echo $! > child.pid; wait")
    for _ in range(200):
        if s.file_exists("child.pid") and s.download_file("child.pid").strip():
            break
        time.sleep(0.02)
    child = int(s.download_file("child.pid"))
    p.kill()
    time.sleep(0.3)
    return alive(child)
""",
    ),
    BlindLiar(
        name="bg_stdout_empty_while_running",
        lie=(
            "a background handle's stdout/stderr are the output so far; this adapter exposes them only "
            "once the process has exited (empty while it runs)"
        ),
        methods=r"""
    async def start_process(self, command, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=False):
        handle = await super().start_process(
            command=command, working_dir=working_dir, environment=environment, on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        base = type(handle)

        class Buffered(base):
            @property
            def stdout(self):
                return "" if self.is_running else base.stdout.fget(self)

            @property
            def stderr(self):
                return "" if self.is_running else base.stderr.fget(self)

        handle.__class__ = Buffered
        return handle
""",
        probe=r"""
import time
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    p = s.start_process("echo ready; echo warming >&2; sleep 30")
    seen = ""
    for _ in range(150):
        seen = p.stdout + p.stderr
        if "ready" in seen and "warming" in seen:
            break
        time.sleep(0.02)
    p.kill()
    return not ("ready" in seen and "warming" in seen)
""",
    ),
    BlindLiar(
        name="start_process_missing_wd_fallback",
        lie=(
            "start_process with a working_dir that does not exist raises FileNotFoundInSandboxError; this "
            "adapter falls back to the sandbox's working directory and starts the command there"
        ),
        methods=r"""
    async def start_process(self, command, working_dir=None, environment=None, on_stdout=None, on_stderr=None, stdin=False):
        if working_dir is not None and not await self.file_exists(path=working_dir):
            working_dir = None  # "best effort": run where we can
        return await super().start_process(
            command=command, working_dir=working_dir, environment=environment, on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
""",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import FileNotFoundInSandboxError
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    try:
        p = s.start_process("pwd", working_dir="no/such/dir")
    except FileNotFoundInSandboxError:
        return False
    p.wait(10)
    return True
""",
    ),
    # ------------------------------------------------------------------------------------------ files
    BlindLiar(
        name="upload_tail_chunk_dropped",
        lie=(
            "upload_file writes the content byte for byte; above 64 KiB this adapter writes whole 64 KiB "
            "chunks only and drops the final partial one (multiples of 64 KiB, like 6 MiB, survive)"
        ),
        methods=r"""
    async def upload_file(self, path, content, mode="w"):
        data = self.content_bytes(content)
        chunk = 65536
        if len(data) > chunk:  # chunked transfer: range(len // chunk) forgets the remainder
            data = b"".join(data[i * chunk : (i + 1) * chunk] for i in range(len(data) // chunk))
        await super().upload_file(path=path, content=data, mode=mode)
""",
        probe=r"""
import os
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    data = os.urandom(65536 + 1000)
    s.upload_file("blob.bin", data)
    return s.download_file("blob.bin") != data
""",
    ),
    BlindLiar(
        name="upload_relative_to_workspace_root",
        lie=(
            "a relative path is relative to SandboxConfig.working_directory; this adapter's upload_file "
            "resolves it against the workspace root, so commands (which start in the working directory) "
            "do not find the file"
        ),
        methods=r"""
    async def upload_file(self, path, content, mode="w"):
        if not path.startswith("/"):
            path = self._view_root.rstrip("/") + "/" + path
        await super().upload_file(path=path, content=content, mode=mode)
""",
        probe=r"""
from grainchain import SandboxConfig
cfg = SandboxConfig(working_directory="project", provider_config={"isolation": "none"})
with Sandbox(name, cfg) as s:
    s.upload_file("note.txt", "hello")
    return s.execute("cat note.txt").stdout != "hello"
""",
        config='{"working_directory": "project", "provider_config": {"isolation": "none"}}',
    ),
    BlindLiar(
        name="download_crlf_translated",
        lie=(
            "download_file returns the file byte for byte; this adapter reads it with universal newlines, "
            "turning CRLF and lone CR into LF"
        ),
        methods=r"""
    async def download_file(self, path):
        data = await super().download_file(path=path)
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    data = b"line1\r\nline2\rend\x00\xff"
    s.upload_file("crlf.bin", data)
    return s.download_file("crlf.bin") != data
""",
    ),
    BlindLiar(
        name="list_hides_dotfiles",
        lie=(
            "list_files lists every entry of the directory, hidden ones too; this adapter leaves out "
            "names starting with '.', as `ls` without -a does"
        ),
        methods=r"""
    async def list_files(self, path="."):
        infos = await super().list_files(path=path)
        return [info for info in infos if not info.name.startswith(".")]
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file(".env", "SECRET=1")
    s.upload_file("visible.txt", "x")
    names = {info.name for info in s.list_files(".")}
    return names != {".env", "visible.txt"}
""",
    ),
    BlindLiar(
        name="list_astral_names_mangled",
        lie=(
            "list_files gives each entry's name and path as they are; this adapter passes names through a "
            "UCS-2 transport that turns characters outside the Basic Multilingual Plane (emoji) into U+FFFD"
        ),
        methods=r"""
    async def list_files(self, path="."):
        infos = await super().list_files(path=path)

        def ucs2(text):
            return "".join(c if ord(c) <= 0xFFFF else "\ufffd" for c in text)

        return [info.model_copy(update={"name": ucs2(info.name), "path": ucs2(info.path)}) for info in infos]
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file("smile\U0001F600.txt", "x")
    return [info.name for info in s.list_files(".")] != ["smile\U0001F600.txt"]
""",
    ),
    BlindLiar(
        name="info_mtime_is_ctime",
        lie=(
            "FileInfo.modified_time is the last modification time; this adapter's get_file_info reports "
            "the inode change time (ctime), so an mtime set with `touch -d` is lost"
        ),
        methods=r"""
    async def get_file_info(self, path):
        info = await super().get_file_info(path=path)
        st = os.lstat(info.path)  # isolation none: the shown path is the host path
        return info.model_copy(update={"modified_time": datetime.fromtimestamp(st.st_ctime, UTC)})
""",
        imports="import os\nfrom datetime import UTC, datetime",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.execute("echo x > old.txt && touch -d '2001-02-03 04:05:06Z' old.txt")
    return s.get_file_info("old.txt").modified_time.year != 2001
""",
    ),
    BlindLiar(
        name="file_exists_raises_under_missing_dir",
        lie=(
            "file_exists returns False for a missing path and never raises FileNotFoundInSandboxError; "
            "this adapter raises it when the path's parent directory is missing"
        ),
        methods=r"""
    async def file_exists(self, path):
        parent = posixpath.dirname(path.rstrip("/"))
        if parent not in ("", ".", "/") and not await super().file_exists(path=parent):
            raise FileNotFoundInSandboxError(parent, provider=self.provider_name)
        return await super().file_exists(path=path)
""",
        imports="import posixpath\nfrom grainchain.errors import FileNotFoundInSandboxError",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import FileNotFoundInSandboxError
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    try:
        return s.file_exists("no_dir/inner/file.txt") is not False
    except FileNotFoundInSandboxError:
        return True
""",
    ),
    BlindLiar(
        name="delete_dir_keeps_hidden",
        lie=(
            "delete_file removes a directory with everything in it; this adapter empties it like "
            "`rm -rf dir/* && rmdir dir` (errors ignored), so a directory holding hidden entries stays, "
            "with them"
        ),
        methods=r"""
    async def delete_file(self, path):
        info = await super().get_file_info(path=path)
        if not info.is_directory:
            await super().delete_file(path=path)
            return
        entries = await super().list_files(path=path)
        for entry in entries:
            if not entry.name.startswith("."):  # the shell glob `*`
                await super().delete_file(path=entry.path)
        remaining = await super().list_files(path=path)
        if not remaining:
            await super().delete_file(path=path)
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file("cfg/.hidden", "h")
    s.upload_file("cfg/shown", "s")
    s.delete_file("cfg")
    return s.file_exists("cfg")
""",
    ),
    BlindLiar(
        name="upload_symlink_escape",
        lie=(
            "a file operation reaches exactly what the sandbox's commands reach, never the client's host "
            "beyond it; this isolated adapter's upload_file checks the path only lexically, then writes by "
            "host path below the workspace, following on the host a symlink that leads out of it"
        ),
        methods=r"""
    async def upload_file(self, path, content, mode="w"):
        root = self._view_root.rstrip("/")
        shown = posixpath.normpath(posixpath.join(self._cwd, path))
        if shown != root and not shown.startswith(root + "/"):
            await super().upload_file(path=path, content=content, mode=mode)
            return
        host = os.path.join(str(self._box.workspace), posixpath.relpath(shown, root))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "ab" if mode.startswith("a") else "wb") as f:
            f.write(self.content_bytes(content))
""",
        imports="import os\nimport posixpath",
        probe=r"""
import os, shutil, tempfile
from grainchain import SandboxConfig
outside = tempfile.mkdtemp(prefix="blind-outside-")
try:
    with Sandbox(name, SandboxConfig(provider_config={"isolation": "namespaces"})) as s:
        s.execute(f"ln -s '{outside}' out")  # (commands see the sandbox's own /tmp there)
        s.upload_file("out/pwned.txt", "escaped")
    return os.path.exists(os.path.join(outside, "pwned.txt"))
finally:
    shutil.rmtree(outside, ignore_errors=True)
""",
        config='{"provider_config": {"isolation": "namespaces"}}',
    ),
    # -------------------------------------------------------------------------------------- snapshots
    BlindLiar(
        name="restore_drops_top_dotfiles",
        lie=(
            "restoring a filesystem snapshot brings back every name, hidden ones too; this adapter "
            "restores the top level like `cp -a snapshot/* workspace/`, losing hidden entries there"
        ),
        methods=r"""
    async def _restore_snapshot(self, snapshot_id):
        await super()._restore_snapshot(snapshot_id=snapshot_id)
        top = str(self._box.workspace)
        for entry in os.listdir(top):
            if entry.startswith("."):
                target = os.path.join(top, entry)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.remove(target)
""",
        imports="import os\nimport shutil",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file(".profile", "export A=1")
    s.upload_file(".config/app.ini", "x=1")
    s.upload_file("plain.txt", "p")
    snap = s.create_snapshot()
    s.upload_file("plain.txt", "changed")
    s.restore_snapshot(snap)
    return not (s.file_exists(".profile") and s.file_exists(".config/app.ini"))
""",
    ),
    BlindLiar(
        name="restore_loses_exec_bit",
        lie=(
            "restoring a filesystem snapshot brings back each file's permission bits; this adapter "
            "restores files with mode & 0o666, so execute bits are lost"
        ),
        methods=r"""
    async def _restore_snapshot(self, snapshot_id):
        await super()._restore_snapshot(snapshot_id=snapshot_id)
        for top, _dirs, files in os.walk(str(self._box.workspace)):
            for name in files:
                target = os.path.join(top, name)
                if not os.path.islink(target):
                    os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) & 0o666)
""",
        imports="import os\nimport stat",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file("run.sh", "#!/bin/sh\necho ok\n")
    s.execute("chmod 750 run.sh")
    snap = s.create_snapshot()
    s.upload_file("other.txt", "x")
    s.restore_snapshot(snap)
    return s.get_file_info("run.sh").mode != 0o750
""",
    ),
    BlindLiar(
        name="restore_drops_empty_dirs",
        lie=(
            "restoring a filesystem snapshot brings back empty directories too; this adapter (like git) "
            "restores only directories that hold something"
        ),
        methods=r"""
    async def _restore_snapshot(self, snapshot_id):
        await super()._restore_snapshot(snapshot_id=snapshot_id)
        root = str(self._box.workspace)
        keep = {root, os.path.normpath(str(self._cwd))}
        for top, _dirs, _files in os.walk(root, topdown=False):
            if top not in keep and not os.path.islink(top) and not os.listdir(top):
                os.rmdir(top)
""",
        imports="import os",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.make_directory("cache/empty")
    s.upload_file("kept.txt", "k")
    snap = s.create_snapshot()
    s.upload_file("kept.txt", "changed")
    s.restore_snapshot(snap)
    return not s.file_exists("cache/empty")
""",
    ),
    BlindLiar(
        name="delete_snapshot_tombstone",
        lie=(
            "a deleted snapshot is no longer listed and can no longer be restored; this adapter only "
            "writes a tombstone that hides it from list_snapshots, and restore_snapshot still brings it back"
        ),
        methods=r"""
    def _tombstone(self, snapshot_id):
        return self._state_dir / "local" / "snapshots" / (snapshot_id + ".deleted")

    async def delete_snapshot(self, snapshot_id):
        fs.snapshot_info(self._state_dir, snapshot_id)  # unknown id: SnapshotNotFoundError
        if self._tombstone(snapshot_id).exists():
            raise SnapshotNotFoundError(snapshot_id, provider=self.provider_name)
        self._tombstone(snapshot_id).touch()  # space is reclaimed "later"

    async def list_snapshots(self):
        infos = await super().list_snapshots()
        return [info for info in infos if not self._tombstone(info.snapshot_id).exists()]
""",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import SnapshotNotFoundError
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file("a.txt", "v1")
    snap = s.create_snapshot()
    s.delete_snapshot(snap)
    s.upload_file("a.txt", "v2")
    try:
        s.restore_snapshot(snap)
    except SnapshotNotFoundError:
        return False
    return True
""",
    ),
    BlindLiar(
        name="memory_snapshot_no_processes",
        lie=(
            "after restoring a memory snapshot its running processes continue; this adapter restores "
            "only the snapshot's files and leaves the processes behind"
        ),
        methods=r"""
    def _restore_processes(self, snapshot_id):
        return None  # the files are back; processes "restart on demand"
""",
        probe=r"""
import time
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "namespaces"})) as s:
    s.execute("(i=0; while :; do i=$((i+1)); echo $i > count.txt; sleep 0.1; done) >/dev/null 2>&1 &")
    for _ in range(100):
        if s.file_exists("count.txt") and s.download_file("count.txt").strip():
            break
        time.sleep(0.05)
    snap = s.create_snapshot(kind="memory")
    s.restore_snapshot(snap)
    time.sleep(0.3)
    first = int(s.download_file("count.txt").strip() or 0)
    time.sleep(1.0)
    second = int(s.download_file("count.txt").strip() or 0)
    return not second > first
""",
        config='{"provider_config": {"isolation": "namespaces"}}',
    ),
    # -------------------------------------------------------------------------------------- lifecycle
    BlindLiar(
        name="wake_up_ignores_snapshot",
        lie=(
            "wake_up(snapshot_id) starts the sandbox again from that snapshot; this adapter checks that "
            "the snapshot exists but wakes up with the files the sandbox had"
        ),
        methods=r"""
    async def wake_up(self, snapshot_id=None):
        if snapshot_id is not None:
            fs.snapshot_info(self._state_dir, snapshot_id)  # unknown id: SnapshotNotFoundError
        await super().wake_up(snapshot_id=None)
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.upload_file("state.txt", "before")
    snap = s.create_snapshot()
    s.upload_file("state.txt", "after")
    s.terminate()
    s.wake_up(snap)
    return s.download_file("state.txt") != b"before"
""",
    ),
    BlindLiar(
        name="terminate_keeps_processes",
        lie=(
            "while a sandbox is terminated none of its processes runs; this adapter's terminate only "
            "marks it terminated and leaves its processes running"
        ),
        methods=r"""
    async def terminate(self):
        self.status = SandboxStatus.terminated  # "the backend stops it lazily"
        self._save(SandboxStatus.terminated)
""",
        imports="from grainchain.models import SandboxStatus",
        probe=r"""
import time
from grainchain import SandboxConfig

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False

with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    p = s.start_process("sleep 60")
    left = int(s.execute("sleep 60 >/dev/null 2>&1 & echo $!").stdout)
    s.terminate()
    time.sleep(0.3)
    running = alive(p.pid) or alive(left)
    s.wake_up()
    return running
""",
    ),
    BlindLiar(
        name="close_leaves_background",
        lie=(
            "close ends every process of the sandbox, `cmd &` included; this adapter's close kills only "
            "the background handles it tracks and moves the rest out of the sandbox's cgroup (so that "
            "it can be removed), where they keep running"
        ),
        methods=r"""
    async def aclose(self):
        await self._lie_release()
        await super().aclose()

    def close(self):
        self._lie_release()
        super().close()

    async def _lie_release(self):
        for handle in self._handles:
            await handle.kill()
        self._handles.clear()
        self._lie_closing = True
        self._stop_spawner()
        group = self._cgroup
        if group is not None:  # move the rest out, so that the cgroup can be removed
            for path in group.dirs.values():
                for pid in group.pids():
                    with contextlib.suppress(OSError):
                        (Path(path).parent / "cgroup.procs").write_text(str(pid))

    async def _kill_all(self):
        if getattr(self, "_lie_closing", False):
            return
        await super()._kill_all()
""",
        imports="from pathlib import Path",
        probe=r"""
import os, signal, time
from grainchain import SandboxConfig

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False

with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    s.start_process("sleep 60")
    left = int(s.execute("sleep 60 >/dev/null 2>&1 & echo $!").stdout)
time.sleep(0.3)
running = alive(left)
if running:  # clean up what the liar left behind
    os.kill(left, signal.SIGKILL)
return running
""",
    ),
    BlindLiar(
        name="auto_cleanup_ignored",
        lie=(
            "with auto_cleanup (the default) close deletes what the sandbox created so it cannot be "
            "reconnected; this adapter always keeps it, as if auto_cleanup were False"
        ),
        methods=r"""
    async def aclose(self):
        self.config = self.config.model_copy(update={"auto_cleanup": False})
        await super().aclose()

    def close(self):
        self.config = self.config.model_copy(update={"auto_cleanup": False})
        super().close()
""",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(provider_config={"isolation": "none"})) as s:
    sid = s.sandbox_id
    s.upload_file("f.txt", "x")
return sid in [info.sandbox_id for info in Sandbox.list_sandboxes(provider=name)]
""",
    ),
    BlindLiar(
        name="keep_alive_detach_kills",
        lie=(
            "with keep_alive, leaving `with` detaches and the sandbox keeps running, its processes too, "
            "for connect(); this adapter's detach kills the sandbox's processes"
        ),
        methods=r"""
    async def detach(self):
        await self._kill_all()  # "no orphans while nobody watches"
        await super().detach()
""",
        probe=r"""
import time
from grainchain import SandboxConfig

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False

# keep_alive is set here, not in `config`: a whole suite run with it would leave every sandbox running
with Sandbox(name, SandboxConfig(keep_alive=True, provider_config={"isolation": "none"})) as s:
    sid = s.sandbox_id
    left = int(s.execute("sleep 60 >/dev/null 2>&1 & echo $!").stdout)
time.sleep(0.3)
running = alive(left)
again = Sandbox.connect(sid, provider=name)
again.close()
return not running
""",
    ),
    # ----------------------------------------------------------------------------------------- limits
    BlindLiar(
        name="output_limit_per_stream",
        lie=(
            "output_limit caps stdout plus stderr of one command; this adapter caps each stream "
            "separately, so a command may keep up to twice the limit without OutputLimitExceededError"
        ),
        methods=r"""
    def _collector(self, on_stdout, on_stderr):
        class PerStream(OutputCollector):
            def feed(self, stream, data):
                with self._lock:
                    room = self.limit - len(self._data[stream])
                    if len(data) > room:
                        data = data[: max(room, 0)]
                        self.overflowed = True
                    self._data[stream] += data
                    callback = self._callbacks[stream]
                    text = self._decoders[stream].decode(data) if callback else ""
                if text and callback:
                    callback(text)

        return PerStream(limit=self.config.output_limit, on_stdout=on_stdout, on_stderr=on_stderr)
""",
        imports="from grainchain._output import OutputCollector",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import OutputLimitExceededError
with Sandbox(name, SandboxConfig(output_limit="4MiB", provider_config={"isolation": "none"})) as s:
    try:  # 3 MiB on each stream: 6 MiB in all
        s.execute("head -c 3145728 /dev/zero; head -c 3145728 /dev/zero >&2")
    except OutputLimitExceededError:
        return False
    return True
""",
        config='{"output_limit": "4MiB", "provider_config": {"isolation": "none"}}',
    ),
    BlindLiar(
        name="memory_limit_kib",
        lie=(
            "memory_limit (bytes, or a size string) is enforced; this adapter hands the byte count to a "
            "backend field that counts KiB, so the cap is 1024 times too high and never reached"
        ),
        methods=r"""
    @classmethod
    async def create(cls, backend, config, options):
        lied = config
        if config.memory_limit is not None:
            lied = config.model_copy(update={"memory_limit": int(config.memory_limit) * 1024})
        adapter = await super().create(backend, lied, options)
        adapter.config = config
        return adapter
""",
        probe=r"""
from grainchain import SandboxConfig
from grainchain.errors import MemoryLimitExceededError
with Sandbox(name, SandboxConfig(memory_limit="128MB", provider_config={"isolation": "none"})) as s:
    try:
        r = s.execute("python3 -c 'b = bytearray(300 * 1024 * 1024); print(len(b))'")
    except MemoryLimitExceededError:
        return False
    return r.return_code == 0
""",
        config='{"memory_limit": "128MB", "provider_config": {"isolation": "none"}}',
    ),
    BlindLiar(
        name="cpu_limit_rounded_up",
        lie=(
            "cpu_limit caps CPU in cores (0.25 = a quarter of a core); this adapter rounds the cap up to "
            "whole cores, so a fractional limit lets a command use a full core"
        ),
        methods=r"""
    @classmethod
    async def create(cls, backend, config, options):
        lied = config
        if config.cpu_limit is not None:
            lied = config.model_copy(update={"cpu_limit": float(math.ceil(config.cpu_limit))})
        adapter = await super().create(backend, lied, options)
        adapter.config = config
        return adapter
""",
        imports="import math",
        probe=r"""
from grainchain import SandboxConfig
with Sandbox(name, SandboxConfig(cpu_limit=0.25, provider_config={"isolation": "none"})) as s:
    r = s.execute(
        "python3 -c 'import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint(time.process_time())'"
    )
    return float(r.stdout) > 0.8
""",
        config='{"cpu_limit": 0.25, "provider_config": {"isolation": "none"}}',
    ),
]
