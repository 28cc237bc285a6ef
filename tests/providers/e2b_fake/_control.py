"""The control plane: the REST API the SDK calls at E2B_API_URL (the routes of `e2b.api.client`), with the
JSON shapes of its OpenAPI models. Requests carry the API key in `X-API-KEY`; a wrong or missing key gets
401 with the `{"code", "message"}` body the SDK parses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl

from ._http import Receive, Scope, Send, read_body
from ._sandbox import (
    CPU_COUNT,
    DEFAULT_TIMEOUT,
    DISK_SIZE_MB,
    ENVD_VERSION,
    MEMORY_MB,
    SNAPSHOT_LIMITATION,
    ApiError,
    Cloud,
    Sandbox,
    utcnow,
)

CLIENT_ID = "fake-e2b"
MAX_PAGE = 100


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "request body must be a JSON object")
        return value


@dataclass
class ApiResponse:
    status: int
    body: Any = None  # JSON; None: no body
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class ControlPlane:
    def __init__(self, cloud: Cloud, api_key: str) -> None:
        self.cloud = cloud
        self.api_key = api_key
        sandbox = r"/sandboxes/(?P<id>[^/]+)"
        table: Iterable[tuple[str, str, Handler]] = [
            ("POST", "/v2/sandboxes", self.create),
            ("POST", "/sandboxes", self.create),
            ("GET", "/v2/sandboxes", self.list),
            ("GET", "/sandboxes", self.list_running),
            ("GET", sandbox, self.info),
            ("DELETE", sandbox, self.kill),
            ("POST", sandbox + "/timeout", self.set_timeout),
            ("POST", sandbox + "/refreshes", self.refresh),
            ("POST", sandbox + "/pause", self.pause),
            ("POST", sandbox + "/resume", self.resume),
            ("POST", "/v2" + sandbox + "/connect", self.connect),
            ("POST", sandbox + "/connect", self.connect),
            ("POST", sandbox + "/snapshots", self.create_snapshot),
            ("POST", sandbox + "/fork", self.fork),
            ("PUT", sandbox + "/network", self.update_network),
            ("GET", sandbox + "/metrics", self.metrics),
            ("GET", "/snapshots", self.list_snapshots),
            ("DELETE", "/templates/(?P<id>.+)", self.delete_template),
        ]
        self.routes = [(method, re.compile(pattern + "$"), handler) for method, pattern, handler in table]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = ApiRequest(
            scope["method"], scope["path"], parse_qs(scope["query_string"].decode()), headers, body
        )
        try:
            response = await self._dispatch(request)
        except ApiError as e:
            response = ApiResponse(e.status, {"code": e.status, "message": e.message})
        raw_headers = [(k.encode(), v.encode()) for k, v in response.headers]
        payload = b""
        if response.body is not None:
            payload = json.dumps(response.body).encode()
            raw_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _dispatch(self, request: ApiRequest) -> ApiResponse:
        if not secrets.compare_digest(request.headers.get("x-api-key", ""), self.api_key):
            raise ApiError(
                401, "Invalid API key, please visit https://e2b.dev/docs/api-key for more information."
            )
        path_matched = False
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method == request.method:
                request.params = match.groupdict()
                return await handler(request)
        if path_matched:
            raise ApiError(405, f"method {request.method} not allowed on {request.path}")
        raise ApiError(404, f"no route {request.method} {request.path} in the fake E2B API")

    # -- JSON shapes (e2b.api.client.models)

    @staticmethod
    def created(box: Sandbox) -> dict[str, Any]:
        """models.Sandbox: the answer to create, connect and fork."""
        return {
            "templateID": box.template_id,
            "sandboxID": box.id,
            "alias": box.alias,
            "clientID": CLIENT_ID,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": box.envd_access_token,
            "trafficAccessToken": None,
            "domain": None,
        }

    @staticmethod
    def listed(box: Sandbox) -> dict[str, Any]:
        """models.ListedSandbox."""
        return {
            "templateID": box.template_id,
            "alias": box.alias,
            "sandboxID": box.id,
            "clientID": CLIENT_ID,
            "startedAt": rfc3339(box.started_at),
            "endAt": rfc3339(box.end_at),
            "cpuCount": CPU_COUNT,
            "memoryMB": MEMORY_MB,
            "diskSizeMB": DISK_SIZE_MB,
            "metadata": box.metadata,
            "state": "paused" if box.state == "paused" else "running",
            "envdVersion": ENVD_VERSION,
            "volumeMounts": [],
        }

    def detail(self, box: Sandbox) -> dict[str, Any]:
        """models.SandboxDetail."""
        body = {
            **self.listed(box),
            "envdAccessToken": box.envd_access_token,
            "allowInternetAccess": box.allow_internet_access,
            "domain": None,
            "lifecycle": {"autoResume": box.auto_resume, "onTimeout": "pause" if box.auto_pause else "kill"},
        }
        if box.network is not None:
            body["network"] = box.network
        if box.pause_mode is not None:
            body["pauseMode"] = box.pause_mode
        return body

    # -- sandboxes

    async def create(self, request: ApiRequest) -> ApiResponse:
        body = request.json()
        template = body.get("templateID")
        if not isinstance(template, str) or not template:
            raise ApiError(400, "templateID is required")
        timeout = _int(body.get("timeout", DEFAULT_TIMEOUT), "timeout")
        metadata = _str_map(body.get("metadata"), "metadata")
        env_vars = _str_map(body.get("envVars"), "envVars")
        if body.get("volumeMounts"):
            raise ApiError(400, "volume mounts are not supported by the fake E2B")
        auto_resume = body.get("autoResume") or {}
        box, _ = await self.cloud.create(
            template=template,
            timeout=timeout,
            metadata=metadata,
            env_vars=env_vars,
            auto_pause=bool(body.get("autoPause", False)),
            auto_pause_memory=bool(body.get("autoPauseMemory", True)),
            auto_resume=bool(auto_resume.get("enabled", False)),
            allow_internet_access=body.get("allow_internet_access"),
            network=body.get("network"),
            idempotency_key=request.headers.get("idempotency-key"),
        )
        return ApiResponse(201, self.created(box))

    async def list(self, request: ApiRequest) -> ApiResponse:
        boxes = list(self.cloud.sandboxes.values())
        states = (request.arg("state") or "running,paused").split(",")
        boxes = [box for box in boxes if box.state in states]
        if metadata := request.arg("metadata"):
            wanted = dict(parse_qsl(metadata, keep_blank_values=True))
            boxes = [box for box in boxes if all(box.metadata.get(k) == v for k, v in wanted.items())]
        if template := request.arg("template"):
            boxes = [box for box in boxes if template in (box.template_id, box.alias)]
        if started_after := request.arg("startedAfter"):
            try:
                after = datetime.fromisoformat(started_after.replace("Z", "+00:00"))
            except ValueError:
                raise ApiError(400, f"invalid startedAfter: {started_after}") from None
            boxes = [box for box in boxes if box.started_at >= after]
        order = request.arg("order") or "asc"
        boxes.sort(key=lambda box: box.started_at, reverse=order == "desc")
        page, headers = _page(boxes, request)
        return ApiResponse(200, [self.listed(box) for box in page], headers)

    async def list_running(self, request: ApiRequest) -> ApiResponse:
        """The v1 list: running sandboxes, unpaginated."""
        boxes = [box for box in self.cloud.sandboxes.values() if box.state == "running"]
        if metadata := request.arg("metadata"):
            wanted = dict(parse_qsl(metadata, keep_blank_values=True))
            boxes = [box for box in boxes if all(box.metadata.get(k) == v for k, v in wanted.items())]
        return ApiResponse(200, [self.listed(box) for box in boxes])

    async def info(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(200, self.detail(self.cloud.get(request.params["id"])))

    async def kill(self, request: ApiRequest) -> ApiResponse:
        await self.cloud.kill(self.cloud.get(request.params["id"]))
        return ApiResponse(204)

    async def set_timeout(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        timeout = _int(request.json().get("timeout"), "timeout")
        if box.state == "running":
            self.cloud.set_timeout(box, timeout)
        box.timeout = timeout
        return ApiResponse(204)

    async def refresh(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        self.cloud.set_timeout(box, _int(request.json().get("duration", DEFAULT_TIMEOUT), "duration"))
        return ApiResponse(204)

    async def pause(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        memory = request.json().get("memory", True)
        await self.cloud.pause(box, memory=memory is not False)
        return ApiResponse(204)

    async def resume(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        if box.state != "paused":
            raise ApiError(409, f'sandbox "{box.id}" is already running')
        body = request.json()
        await self.cloud.resume(box, timeout=_int(body.get("timeout", DEFAULT_TIMEOUT), "timeout"))
        return ApiResponse(201, self.created(box))

    async def connect(self, request: ApiRequest) -> ApiResponse:
        """Resumes a paused sandbox (201); for a running one, extends the timeout if the new one is later (200)."""
        box = self.cloud.get(request.params["id"])
        body = request.json()
        timeout = _int(body.get("timeout", DEFAULT_TIMEOUT), "timeout")
        if box.state == "paused":
            await self.cloud.resume(box, timeout=timeout, memory=body.get("memory", True) is not False)
            return ApiResponse(201, self.created(box))
        if utcnow().timestamp() + timeout > box.end_at.timestamp():
            self.cloud.set_timeout(box, timeout)
        return ApiResponse(200, self.created(box))

    async def fork(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        body = request.json()
        timeout = _int(body.get("timeout", box.timeout), "timeout")
        count = _int(body.get("count", 1), "count")
        if not 1 <= count <= 20:
            raise ApiError(400, "count must be between 1 and 20")
        children = [await self.cloud.fork(box, timeout=timeout) for _ in range(count)]
        return ApiResponse(201, [{"sandbox": self.created(child)} for child in children])

    async def update_network(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        box.network = {**(box.network or {}), **request.json()}
        return ApiResponse(204)

    async def metrics(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        used = await asyncio.to_thread(_disk_usage, box.paths.root)
        now = utcnow()
        metric = {
            "timestamp": rfc3339(now),
            "timestampUnix": int(now.timestamp()),
            "cpuCount": CPU_COUNT,
            "cpuUsedPct": 0.0,
            "memUsed": 0,
            "memTotal": MEMORY_MB * 2**20,
            "memCache": 0,
            "diskUsed": used,
            "diskTotal": DISK_SIZE_MB * 2**20,
        }
        return ApiResponse(200, [metric])

    # -- snapshots

    async def create_snapshot(self, request: ApiRequest) -> ApiResponse:
        box = self.cloud.get(request.params["id"])
        body = request.json()
        name = body.get("name")
        if name is not None and (
            not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name)
        ):
            raise ApiError(400, f"invalid snapshot name: {name!r}")
        snapshot = await self.cloud.snapshot(box, name=name, memory=body.get("memory", True) is not False)
        answer = {"snapshotID": snapshot.id, "names": snapshot.names, "fakeLimitation": SNAPSHOT_LIMITATION}
        return ApiResponse(201, answer, [("x-fake-e2b-limitation", SNAPSHOT_LIMITATION)])

    async def list_snapshots(self, request: ApiRequest) -> ApiResponse:
        snapshots = sorted(self.cloud.snapshots.values(), key=lambda s: s.created_at)
        if sandbox_id := request.arg("sandboxID"):
            snapshots = [s for s in snapshots if s.source_sandbox_id == sandbox_id]
        if name := request.arg("name"):
            found = self.cloud.find_snapshot(name)
            snapshots = [s for s in snapshots if s is found]
        page, headers = _page(snapshots, request)
        return ApiResponse(200, [{"snapshotID": s.id, "names": s.names} for s in page], headers)

    async def delete_template(self, request: ApiRequest) -> ApiResponse:
        """Deletes snapshots (the SDK's delete_snapshot); the fake's templates cannot be deleted."""
        if await self.cloud.delete_snapshot(request.params["id"]):
            return ApiResponse(204)
        raise ApiError(404, f"template '{request.params['id']}' not found")


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(400, f"{name} must be a non-negative integer")
    return value


def _str_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(400, f"{name} must map strings to strings")
    return dict(value)


def _page(items: list[Any], request: ApiRequest) -> tuple[list[Any], list[tuple[str, str]]]:
    """Cursor pagination as the SDK reads it: `limit`, `nextToken`, and `x-next-token` when more remain."""
    limit = MAX_PAGE
    if (raw := request.arg("limit")) is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}")
        limit = int(raw)
    start = 0
    if (token := request.arg("nextToken")) is not None:
        if not token.isdigit():
            raise ApiError(400, "invalid nextToken")
        start = int(token)
    page = items[start : start + limit]
    headers = [("x-next-token", str(start + limit))] if start + limit < len(items) else []
    return page, headers


def _disk_usage(root: os.PathLike[str]) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(directory, name)).st_size
    return total
