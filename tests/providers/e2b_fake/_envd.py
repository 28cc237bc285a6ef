"""envd, the agent inside every sandbox, as the SDK reaches it at E2B_SANDBOX_URL: one endpoint for every
sandbox, told apart by the `E2b-Sandbox-Id` header (as E2B's edge proxy does), with the sandbox's access
token in `X-Access-Token`.

* `GET /health`, `GET|POST /files` (download; multipart or octet-stream upload): envd's HTTP API.
* `/process.Process/*`, `/filesystem.Filesystem/*`: the Connect-RPC services, served by the generated
  ASGI apps of the e2b wheel (`process_connect`, `filesystem_connect`) over the services below.

What envd answers, and how, follows envd's Go source (e2b-dev/infra, packages/envd): error codes, messages,
the end event of a process, the order of a directory listing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import grp
import gzip
import hashlib
import json
import os
import posixpath
import pwd
import secrets
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_connect
from e2b.envd.filesystem import filesystem_pb as fs_pb
from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process import process_connect
from e2b.envd.process import process_pb as proc_pb
from e2b.envd.process.process_connect import ProcessASGIApplication
from protobuf import Oneof
from protobuf.wkt import Timestamp

from tests.providers._fakebox import StartError

from ._http import CURRENT_LINK, DropConnection, Receive, RequestLink, Scope, Send, read_body
from ._paths import DEFAULT_USER, USERS, SandboxPaths
from ._sandbox import Cloud, Process, ProcessEnd, ProcessItem, Sandbox

ENVD_PORT = "49983"
XATTR_PREFIX = "user.e2b."  # where envd keeps a file's user metadata
METADATA_HEADER = "x-metadata-"
CHUNK = 64 * 1024


@dataclass
class _Apps:
    process: ProcessASGIApplication
    filesystem: FilesystemASGIApplication


class Envd:
    """The ASGI app for requests that carry `E2b-Sandbox-Id`."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        sandbox_id = headers.get("e2b-sandbox-id", "")
        box = self.cloud.sandboxes.get(sandbox_id)
        if box is not None and box.state == "paused" and box.auto_resume:
            await self.cloud.resume(box, timeout=box.timeout)  # auto-resume: traffic wakes the sandbox
        if box is None or box.state != "running":
            # The edge proxy's answer for a sandbox that is not running (killed, timed out, paused).
            body = {
                "code": 502,
                "message": f"The sandbox {sandbox_id} was not found",
                "sandboxId": sandbox_id,
            }
            await _json(send, 502, body)
            return
        if headers.get("e2b-sandbox-port", ENVD_PORT) != ENVD_PORT:
            message = (
                f"The sandbox {sandbox_id} is running but port {headers['e2b-sandbox-port']} is not open"
            )
            await _json(send, 502, {"code": 502, "message": message, "sandboxId": sandbox_id})
            return
        method, path = scope["method"], scope["path"]
        token = headers.get("x-access-token")
        authorized = token is not None and secrets.compare_digest(token, box.envd_access_token)
        if not authorized and f"{method}{path}" not in ("GET/health", "GET/files", "POST/files"):
            message = (
                "unauthorized access, please provide a valid access token or method signing if supported"
            )
            await _json(send, 401, {"code": 401, "message": message})
            return
        link = CURRENT_LINK.get()
        box.links.add(link)
        try:
            if path == "/health":
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif path == "/files" and method in ("GET", "POST"):
                files = Files(box, headers, parse_qs(scope["query_string"].decode(), keep_blank_values=True))
                await (files.download(send) if method == "GET" else files.upload(receive, send))
            elif path.startswith("/process.Process/"):
                await self._apps(box).process(scope, receive, send)
            elif path.startswith("/filesystem.Filesystem/"):
                await self._apps(box).filesystem(scope, receive, send)
            else:
                await _json(send, 404, {"code": 404, "message": f"no envd route {method} {path}"})
        finally:
            box.links.discard(link)
            if link.dropped:
                raise DropConnection

    @staticmethod
    def _apps(box: Sandbox) -> _Apps:
        if box.envd_apps is None:
            box.envd_apps = _Apps(
                ProcessASGIApplication(ProcessService(box)), FilesystemASGIApplication(FilesystemService(box))
            )
        apps: _Apps = box.envd_apps
        return apps


async def _json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    start_headers = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class _EnvdError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -------------------------------------------------------------------------------------------------- /files


class Files:
    """envd's HTTP file API: GET streams a file; POST writes one (octet-stream) or several (multipart)."""

    def __init__(self, box: Sandbox, headers: dict[str, str], query: dict[str, list[str]]) -> None:
        self.box = box
        self.headers = headers
        self.query = query

    def _arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def _authorize(self, operation: str) -> str:
        """Check the access token or the URL signature (download_url/upload_url); return the user."""
        token = self.headers.get("x-access-token")
        username = self._arg("username")
        if token is not None:
            if not secrets.compare_digest(token, self.box.envd_access_token):
                raise _EnvdError(401, "access token present in header but does not match")
        else:
            signature = self._arg("signature")
            if signature is None:
                raise _EnvdError(401, "missing signature query parameter")
            expiration = self._arg("signature_expiration")
            parts = [self._arg("path") or "", operation, username or "", self.box.envd_access_token]
            if expiration is not None:
                parts.append(expiration)
            digest = hashlib.sha256(":".join(parts).encode()).digest()
            expected = "v1_" + base64.b64encode(digest).rstrip(b"=").decode()
            if not secrets.compare_digest(expected, signature):
                raise _EnvdError(401, "invalid signature")
            if expiration is not None and (not expiration.isdigit() or int(expiration) < time.time()):
                raise _EnvdError(401, "signature is already expired")
        user = username or DEFAULT_USER
        if user not in USERS:
            raise _EnvdError(401, f"error looking up user '{user}': user: unknown user {user}")
        return user

    async def download(self, send: Send) -> None:
        try:
            user = self._authorize("read")
            requested = self.box.paths.expand(self._arg("path") or "", user)
            try:
                _, host = self.box.paths.locate(requested)
                st = host.stat()
            except FileNotFoundError:
                raise _EnvdError(404, f"path '{requested}' does not exist") from None
            except OSError as e:
                raise _EnvdError(500, f"error checking if path exists '{requested}': {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                raise _EnvdError(400, f"path '{requested}' is a directory")
            data = await asyncio.to_thread(host.read_bytes)
        except _EnvdError as e:
            await _json(send, e.status, {"code": e.status, "message": e.message})
            return
        except OSError as e:
            await _json(
                send, 500, {"code": 500, "message": f"error opening file '{requested}': {e.strerror}"}
            )
            return
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(data)).encode()),
            (b"vary", b"Accept-Encoding"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        view = memoryview(data)
        for start in range(0, max(len(data), 1), CHUNK):
            chunk = bytes(view[start : start + CHUNK])
            await send({"type": "http.response.body", "body": chunk, "more_body": start + CHUNK < len(data)})

    async def upload(self, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return
        try:
            user = self._authorize("write")
            data = body
            if self.headers.get("content-encoding", "").lower() == "gzip":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError) as e:
                    raise _EnvdError(400, f"error decompressing request body: {e}") from None
            content_type = self.headers.get("content-type", "")
            media_type = content_type.split(";", 1)[0].strip().lower()
            path = self._arg("path")
            if media_type == "application/octet-stream":
                if path is None:
                    raise _EnvdError(400, "path query parameter is required for raw body upload")
                uploads = [(path, data)]
            elif media_type.startswith("multipart/"):
                uploads = [
                    (path or filename, content) for filename, content in _multipart_files(data, content_type)
                ]
            else:
                raise _EnvdError(
                    400,
                    f"unsupported content type: {content_type}, expected multipart/form-data or "
                    "application/octet-stream",
                )
            metadata = {
                name[len(METADATA_HEADER) :]: value
                for name, value in self.headers.items()
                if name.startswith(METADATA_HEADER)
            }
            written: list[dict[str, Any]] = []
            for upload_path, content in uploads:
                target = self.box.paths.expand(upload_path, user)
                if any(entry["path"] == target for entry in written):
                    raise _EnvdError(
                        400,
                        f"you cannot upload multiple files to the same path '{target}' in one upload request, "
                        "only the first specified file was uploaded",
                    )
                _write_file(self.box.paths, target, content, metadata)
                entry: dict[str, Any] = {"name": posixpath.basename(target), "type": "file", "path": target}
                if metadata:
                    entry["metadata"] = metadata
                written.append(entry)
        except _EnvdError as e:
            await _json(send, e.status, {"code": e.status, "message": e.message})
            return
        await _json(send, 200, written)


def _write_file(paths: SandboxPaths, target: str, content: bytes, metadata: dict[str, str]) -> None:
    try:
        _, host_dir = paths.locate(posixpath.dirname(target), write=True)
        host_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _EnvdError(
            500, f"error ensuring directories: mkdir {posixpath.dirname(target)}: {e.strerror}"
        ) from None
    try:
        _, host = paths.locate(target, write=True)
    except OSError as e:
        raise _EnvdError(500, f"error opening file: open {target}: {e.strerror}") from None
    if host.is_dir():
        raise _EnvdError(400, f"path is a directory: {target}")
    try:
        with host.open("wb") as handle:
            handle.write(content)
    except OSError as e:
        status = 507 if e.errno == errno.ENOSPC else 500
        raise _EnvdError(status, f"error writing file: {e.strerror}") from None
    for key, value in metadata.items():
        with contextlib.suppress(OSError):  # a file system without user xattrs keeps no metadata
            os.setxattr(host, XATTR_PREFIX + key, value.encode())


def _multipart_files(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The `file` parts of a multipart/form-data body, as (filename, content); binary-safe."""
    params = _header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise _EnvdError(500, "error parsing multipart form: no multipart boundary param in Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    files = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise _EnvdError(500, "error reading form: malformed part")
        part_headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("utf-8", "replace").partition(":")
            if name:
                part_headers[name.strip().lower()] = value.strip()
        disposition = _header_params(part_headers.get("content-disposition", ""))
        if disposition.get("name") != "file":
            continue
        files.append((disposition.get("filename", ""), content))
    return files


def _header_params(value: str) -> dict[str, str]:
    """The `;`-separated parameters of a header value (quoted strings with backslash escapes, as Go's mime)."""
    params: dict[str, str] = {}
    i, n = value.find(";"), len(value)
    while 0 <= i < n:
        i += 1
        while i < n and value[i] in " \t":
            i += 1
        eq = value.find("=", i)
        if eq < 0:
            break
        key = value[i:eq].strip().lower()
        i = eq + 1
        if i < n and value[i] == '"':
            i += 1
            out = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            params[key] = "".join(out)
            i = value.find(";", i)
        else:
            end = value.find(";", i)
            params[key] = value[i : end if end >= 0 else n].strip()
            i = end
    return params


# ------------------------------------------------------------------------------------------------ services


def _user(ctx: RequestContext[Any, Any]) -> str:
    """The user of an RPC: `Authorization: Basic base64("name:")`, else the default user."""
    header = ctx.request_headers.get("authorization")
    if not header:
        return DEFAULT_USER
    scheme, _, encoded = header.partition(" ")
    try:
        name = base64.b64decode(encoded).decode().partition(":")[0] if scheme.lower() == "basic" else ""
    except ValueError:
        name = ""
    if name not in USERS:
        raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: '{name}'")
    return name


def _os_error(e: OSError, what: str) -> ConnectError:
    if isinstance(e, FileNotFoundError):
        return ConnectError(Code.NOT_FOUND, f"{what}: no such file or directory")
    if e.errno == errno.ELOOP:
        return ConnectError(Code.FAILED_PRECONDITION, f"cyclic symlink or chain >40 links: {what}")
    return ConnectError(Code.INTERNAL, f"{what}: {e.strerror or e}")


class ProcessService(process_connect.Process):
    """process.Process (process_connect.Process) for one sandbox."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box

    def _find(self, selector: proc_pb.ProcessSelector | None) -> Process:
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=pid):
                proc = self.box.processes.get(int(pid))
                if proc is None:
                    raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
                return proc
            case Oneof(field="tag", value=tag):
                for proc in self.box.processes.values():
                    if proc.tag == tag:
                        return proc
                raise ConnectError(Code.NOT_FOUND, f"process with tag {tag} not found")
        raise ConnectError(Code.UNIMPLEMENTED, "invalid process selector")

    async def list(self, request: proc_pb.ListRequest, ctx: Any) -> proc_pb.ListResponse:
        return proc_pb.ListResponse(
            processes=[
                proc_pb.ProcessInfo(
                    config=proc_pb.ProcessConfig(cmd=p.cmd, args=p.args, envs=p.envs, cwd=p.cwd),
                    pid=p.pid,
                    tag=p.tag,
                )
                for p in self.box.processes.values()
            ]
        )

    async def start(self, request: proc_pb.StartRequest, ctx: Any) -> AsyncIterator[proc_pb.StartResponse]:
        user = _user(ctx)
        if request.pty is not None:
            raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement PTY processes")
        config = request.process or proc_pb.ProcessConfig()
        cwd = config.cwd if config.has_field("cwd") else None
        directory = self.box.paths.expand(cwd or "", user)
        try:
            _, host = self.box.paths.locate(directory)
        except OSError as e:
            raise _os_error(e, directory) from None
        if not host.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{directory}' does not exist")
        proc = Process(
            self.box,
            cmd=config.cmd,
            args=list(config.args),
            envs=dict(config.envs),
            cwd=cwd,
            tag=request.tag if request.has_field("tag") else None,
            stdin_enabled=not request.has_field("stdin") or request.stdin,
        )
        queue = proc.subscribe()
        try:
            await proc.launch(user, ctx.timeout_ms)
        except StartError as e:
            command = " ".join([config.cmd, *config.args])
            raise ConnectError(Code.INVALID_ARGUMENT, f"error starting process '{command}': {e}") from None
        async for event in _process_events(proc, queue, ctx):
            yield proc_pb.StartResponse(event=event)

    async def connect(
        self, request: proc_pb.ConnectRequest, ctx: Any
    ) -> AsyncIterator[proc_pb.ConnectResponse]:
        proc = self._find(request.process)
        queue = proc.subscribe()
        async for event in _process_events(proc, queue, ctx):
            yield proc_pb.ConnectResponse(event=event)

    async def update(self, request: proc_pb.UpdateRequest, ctx: Any) -> proc_pb.UpdateResponse:
        self._find(request.process)
        raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement PTY processes")

    async def send_input(self, request: proc_pb.SendInputRequest, ctx: Any) -> proc_pb.SendInputResponse:
        proc = self._find(request.process)
        await _write_input(proc, request.input)
        return proc_pb.SendInputResponse()

    async def stream_input(
        self, request: AsyncIterator[proc_pb.StreamInputRequest], ctx: Any
    ) -> proc_pb.StreamInputResponse:
        proc: Process | None = None
        async for message in request:
            event = message.event.value if message.event is not None else None
            if isinstance(event, proc_pb.StreamInputRequest.StartEvent):
                proc = self._find(event.process)
            elif isinstance(event, proc_pb.StreamInputRequest.DataEvent):
                if proc is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "input stream data before its start event")
                await _write_input(proc, event.input)
        return proc_pb.StreamInputResponse()

    async def send_signal(self, request: proc_pb.SendSignalRequest, ctx: Any) -> proc_pb.SendSignalResponse:
        proc = self._find(request.process)
        if request.signal not in (proc_pb.Signal.SIGKILL, proc_pb.Signal.SIGTERM):
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {request.signal}")
        proc.send_signal(int(request.signal.value))
        return proc_pb.SendSignalResponse()

    async def close_stdin(self, request: proc_pb.CloseStdinRequest, ctx: Any) -> proc_pb.CloseStdinResponse:
        self._find(request.process).close_stdin()
        return proc_pb.CloseStdinResponse()


async def _write_input(proc: Process, given: proc_pb.ProcessInput | None) -> None:
    match given.input if given is not None else None:
        case Oneof(field="stdin", value=data):
            try:
                await proc.write_stdin(data)
            except OSError as e:
                raise ConnectError(
                    Code.INTERNAL, f"error writing to stdin of process '{proc.pid}': {e}"
                ) from None
        case Oneof(field="pty"):
            raise ConnectError(
                Code.INTERNAL, "tty not assigned to process — input should be written to the stdin"
            )


async def _process_events(
    proc: Process, queue: asyncio.Queue[ProcessItem], ctx: Any
) -> AsyncIterator[proc_pb.ProcessEvent]:
    """start, then data and keepalive events as they come, then end; as envd streams a process."""
    link = CURRENT_LINK.get()
    interval = _keepalive_interval(ctx)
    try:
        yield proc_pb.ProcessEvent(event=_oneof("start", proc_pb.ProcessEvent.StartEvent(pid=proc.pid)))
        while True:
            item = await _next_item(queue, link, interval)
            if item is None:
                yield proc_pb.ProcessEvent(event=_oneof("keepalive", proc_pb.ProcessEvent.KeepAlive()))
            elif isinstance(item, ProcessEnd):
                end = proc_pb.ProcessEvent.EndEvent(
                    exit_code=item.exit_code, exited=item.exited, status=item.status, error=item.error
                )
                yield proc_pb.ProcessEvent(event=_oneof("end", end))
                return
            else:
                stream, data = item
                output = proc_pb.ProcessEvent.DataEvent(output=_oneof(stream, data))
                yield proc_pb.ProcessEvent(event=_oneof("data", output))
    finally:
        proc.unsubscribe(queue)


async def _next_item(
    queue: asyncio.Queue[ProcessItem], link: RequestLink, interval: float | None
) -> ProcessItem | None:
    """The next item; None when `interval` passed without one. Raises DropConnection once the client is
    gone (or the sandbox dropped it)."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    gone = asyncio.ensure_future(link.gone.wait())
    done, _ = await asyncio.wait({getter, gone}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    for task in (getter, gone):
        if task not in done:
            task.cancel()
    if getter in done:
        return getter.result()
    if gone in done:
        raise DropConnection
    return None


def _oneof(name: str, value: object) -> Any:
    """A protobuf oneof value (typed Any: the generated stubs want a Literal field name per variant)."""
    return Oneof(name, value)


def _keepalive_interval(ctx: Any) -> float | None:
    raw = ctx.request_headers.get("keepalive-ping-interval")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


class FilesystemService(filesystem_connect.Filesystem):
    """filesystem.Filesystem (filesystem_connect.Filesystem) for one sandbox."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.paths = box.paths

    async def stat(self, request: fs_pb.StatRequest, ctx: Any) -> fs_pb.StatResponse:
        path = self.paths.expand(request.path, _user(ctx))
        return fs_pb.StatResponse(entry=self._entry(path))

    async def make_dir(self, request: fs_pb.MakeDirRequest, ctx: Any) -> fs_pb.MakeDirResponse:
        path = self.paths.expand(request.path, _user(ctx))
        try:
            _, host = self.paths.locate(path)
            if host.exists():
                if host.is_dir():
                    raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
                raise ConnectError(
                    Code.INVALID_ARGUMENT, f"path already exists but it is not a directory: {path}"
                )
            _, host = self.paths.locate(path, write=True)
            host.mkdir(parents=True)
        except OSError as e:
            raise _os_error(e, f"error making directory {path}") from None
        entry = fs_pb.EntryInfo(name=posixpath.basename(path), type=fs_pb.FileType.DIRECTORY, path=path)
        return fs_pb.MakeDirResponse(entry=entry)

    async def move(self, request: fs_pb.MoveRequest, ctx: Any) -> fs_pb.MoveResponse:
        user = _user(ctx)
        source = self.paths.expand(request.source, user)
        destination = self.paths.expand(request.destination, user)
        try:
            _, host_source = self.paths.locate(source, follow_last=False, write=True)
            _, host_dir = self.paths.locate(posixpath.dirname(destination), write=True)
            host_dir.mkdir(parents=True, exist_ok=True)
            _, host_destination = self.paths.locate(destination, follow_last=False, write=True)
            os.rename(host_source, host_destination)
        except FileNotFoundError:
            raise ConnectError(Code.NOT_FOUND, f"source file not found: {source}") from None
        except OSError as e:
            raise _os_error(e, f"error renaming {source} to {destination}") from None
        return fs_pb.MoveResponse(entry=self._entry(destination))

    async def list_dir(self, request: fs_pb.ListDirRequest, ctx: Any) -> fs_pb.ListDirResponse:
        depth = request.depth or 1
        path = self.paths.expand(request.path, _user(ctx))
        try:
            _, host = self.paths.locate(path)
            st = host.stat()
        except FileNotFoundError:
            raise ConnectError(Code.NOT_FOUND, f"directory not found: {path}") from None
        except OSError as e:
            raise _os_error(e, path) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {path}")
        entries: list[fs_pb.EntryInfo] = []

        def walk(directory: str, level: int) -> None:
            _, host_dir = self.paths.locate(directory)
            with os.scandir(host_dir) as listing:
                names = sorted(item.name for item in listing)
            for name in names:
                child = posixpath.join(directory, name)
                try:
                    entry = self._entry(child)
                except ConnectError:
                    continue  # gone meanwhile
                entries.append(entry)
                if level < depth and entry.type == fs_pb.FileType.DIRECTORY and not entry.is_symlink:
                    walk(child, level + 1)

        try:
            walk(path, 1)
        except OSError as e:
            raise ConnectError(Code.INTERNAL, f"error reading directory: {e.strerror or e}") from None
        # as envd: directories first, then by name regardless of case
        entries.sort(key=lambda e: (e.type != fs_pb.FileType.DIRECTORY, e.name.lower()))
        return fs_pb.ListDirResponse(entries=entries)

    async def remove(self, request: fs_pb.RemoveRequest, ctx: Any) -> fs_pb.RemoveResponse:
        path = self.paths.expand(request.path, _user(ctx))
        try:
            _, host = self.paths.locate(path, follow_last=False)
            if not os.path.lexists(host):
                return fs_pb.RemoveResponse()  # as os.RemoveAll: nothing to remove is no error
            _, host = self.paths.locate(path, follow_last=False, write=True)
            if host.is_dir() and not host.is_symlink():
                _rmtree(host)
            else:
                host.unlink()
        except OSError as e:
            raise _os_error(e, "error removing file or directory") from None
        return fs_pb.RemoveResponse()

    def watch_dir(self, request: fs_pb.WatchDirRequest, ctx: Any) -> AsyncIterator[fs_pb.WatchDirResponse]:
        raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement directory watching")

    async def create_watcher(
        self, request: fs_pb.CreateWatcherRequest, ctx: Any
    ) -> fs_pb.CreateWatcherResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement directory watching")

    async def get_watcher_events(
        self, request: fs_pb.GetWatcherEventsRequest, ctx: Any
    ) -> fs_pb.GetWatcherEventsResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement directory watching")

    async def remove_watcher(
        self, request: fs_pb.RemoveWatcherRequest, ctx: Any
    ) -> fs_pb.RemoveWatcherResponse:
        raise ConnectError(Code.UNIMPLEMENTED, "the fake envd does not implement directory watching")

    def _entry(self, path: str) -> fs_pb.EntryInfo:
        """envd's entryInfo: lstat of the path; a link reports its target's type and mode and
        `is_symlink`."""
        try:
            parent = self.paths.resolve(posixpath.dirname(path))
            own = posixpath.join(parent, posixpath.basename(path)) if path != "/" else "/"
            host, _ = self.paths.host(own)
            st = os.lstat(host)
        except OSError as e:
            if isinstance(e, FileNotFoundError | NotADirectoryError):
                raise ConnectError(Code.NOT_FOUND, f"file not found: {path}") from None
            raise _os_error(e, f"error getting file info: {path}") from None
        target: str | None = None
        kind, mode = _file_type(st.st_mode), stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = self.paths.resolve(own)
                target_st = self.paths.host(target)[0].stat()
                kind, mode = _file_type(target_st.st_mode), stat.S_IMODE(target_st.st_mode)
            except OSError:  # a dangling link: envd says SYMLINK (the SDK lists it as FileType.SYMLINK)
                target = target or own
                kind, mode = fs_pb.FileType.SYMLINK, stat.S_IMODE(st.st_mode)
        owner, group = self._owner(host, st)
        return fs_pb.EntryInfo(
            name=posixpath.basename(path) or "/",
            type=kind,
            path=path,
            size=st.st_size,
            mode=mode,
            permissions=_go_mode_string(st.st_mode),
            owner=owner,
            group=group,
            modified_time=Timestamp.from_nanos(st.st_mtime_ns),
            symlink_target=target,
            metadata=_read_metadata(host) if not stat.S_ISLNK(st.st_mode) else {},
            is_symlink=target is not None,
        )

    def _owner(self, host: Path, st: os.stat_result) -> tuple[str, str]:
        """The sandbox's own files belong to `user`, as in E2B (here they belong to whoever runs the fake)."""
        if st.st_uid == os.geteuid() and self.paths.within(host):
            return "user", "user"
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return owner, group


def _rmtree(host: Path) -> None:
    for directory, dirs, files in os.walk(host, topdown=False):
        for name in files:
            os.unlink(os.path.join(directory, name))
        for name in dirs:
            child = os.path.join(directory, name)
            if os.path.islink(child):
                os.unlink(child)
            else:
                os.rmdir(child)
    os.rmdir(host)


def _file_type(mode: int) -> fs_pb.FileType:
    if stat.S_ISREG(mode):
        return fs_pb.FileType.FILE
    if stat.S_ISDIR(mode):
        return fs_pb.FileType.DIRECTORY
    if stat.S_ISLNK(mode):
        return fs_pb.FileType.SYMLINK
    return fs_pb.FileType.UNSPECIFIED


def _go_mode_string(mode: int) -> str:
    """Go's os.FileMode.String(): type letters ("dalTLDpSugct?", '-' if none), then rwxrwxrwx."""
    letters = ""
    if stat.S_ISDIR(mode):
        letters += "d"
    if stat.S_ISLNK(mode):
        letters += "L"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        letters += "D"
    if stat.S_ISFIFO(mode):
        letters += "p"
    if stat.S_ISSOCK(mode):
        letters += "S"
    if mode & stat.S_ISUID:
        letters += "u"
    if mode & stat.S_ISGID:
        letters += "g"
    if stat.S_ISCHR(mode):
        letters += "c"
    if mode & stat.S_ISVTX:
        letters += "t"
    perms = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return (letters or "-") + perms


def _read_metadata(host: Path) -> dict[str, str]:
    try:
        names = os.listxattr(host)
    except OSError:
        return {}
    metadata = {}
    for name in names:
        if name.startswith(XATTR_PREFIX):
            with contextlib.suppress(OSError):
                metadata[name[len(XATTR_PREFIX) :]] = os.getxattr(host, name).decode(errors="replace")
    return metadata
