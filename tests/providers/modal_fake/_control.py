"""The control plane (`modal.client.ModalClient`): the RPCs the SDK's V2 sandboxes make, served from the
cloud's state. Each method is the handler of the RPC of its name (see `_guard.Service`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from google.protobuf.empty_pb2 import Empty  # type: ignore[import-untyped]
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from modal_proto import api_pb2

from ._cloud import DEFAULT_ENVIRONMENT, Cloud, CloudError, Sandbox
from ._dicts import Dicts
from ._guard import Tokens
from ._images import Builder, Mounts

IMAGE_BUILDER_VERSION = "2025.06"  # one the SDK 1.6 supports (it refuses an environment with another)


def refusal(e: CloudError) -> GRPCError:
    return GRPCError(Status[e.status], e.message)


def tunnels(box: Sandbox) -> list[api_pb2.TunnelData]:
    """Every port is reached on the host's loopback, without TLS: a sandbox shares the host's network."""
    return [
        api_pb2.TunnelData(
            host="127.0.0.1",
            port=spec.port,
            unencrypted_host="127.0.0.1",
            unencrypted_port=spec.port,
            container_port=spec.port,
        )
        for spec in box.definition.open_ports.ports
    ]


def metadata(box: Sandbox) -> api_pb2.SandboxHandleMetadata:
    handle = api_pb2.SandboxHandleMetadata(app_id=box.app_id)
    if box.result is not None:
        handle.result.CopyFrom(box.result)
    return handle


def info(box: Sandbox) -> api_pb2.SandboxInfo:
    resources = box.definition.resources
    return api_pb2.SandboxInfo(
        id=box.id,
        created_at=box.created_at,
        task_info=api_pb2.TaskInfo(
            id=box.task_id,
            sandbox_id=box.id,
            started_at=box.created_at,
            finished_at=box.finished_at,
            result=box.result,
        ),
        app_id=box.app_id,
        tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in box.tags.items()],
        name=box.definition.name,
        image_id=box.definition.image_id,
        resource_info=api_pb2.ResourceInfo(
            memory_mb=api_pb2.ResourceInfo.ResourceValue(value=resources.memory_mb),
            milli_cpu=api_pb2.ResourceInfo.ResourceValue(value=resources.milli_cpu),
            memory_mb_max=resources.memory_mb_max,
            milli_cpu_max=resources.milli_cpu_max,
        ),
        timeout_secs=box.definition.timeout_secs,
        idle_timeout_secs=box.definition.idle_timeout_secs,
        tunnels=tunnels(box),
        metadata=metadata(box),
    )


def inline_env(sources: Any) -> dict[str, str]:
    """The variables of secret sources given inline (`env=`, `Secret.from_dict`); secrets stored by id are
    not kept by the fake."""
    env: dict[str, str] = {}
    for source in sources:
        if source.secret_id:
            raise GRPCError(Status.UNIMPLEMENTED, "the fake keeps no stored secrets: pass env= instead")
        env.update(source.env.contents)
    return env


class ControlPlane(Dicts):
    def __init__(self, cloud: Cloud, tokens: Tokens) -> None:
        super().__init__()
        self.cloud = cloud
        self.tokens = tokens
        self.mounts = Mounts(cloud.root / "blobs")
        self.builder = Builder(cloud, self.mounts)

    def _sandbox(self, sandbox_id: str) -> Sandbox:
        try:
            return self.cloud.get(sandbox_id)
        except CloudError as e:
            raise refusal(e) from None

    def _router_access(self, box: Sandbox) -> api_pb2.CommandRouterAccess:
        jwt = self.tokens.jwt({"task_id": box.task_id, "sandbox_id": box.id})
        return api_pb2.CommandRouterAccess(url=self.cloud.router_url, jwt=jwt)

    # -- client, apps, images

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        token = self.tokens.jwt({"token_id": self.tokens.token_id})
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=token))

    async def AppGetOrCreate(self, stream: Stream[api_pb2.AppGetOrCreateRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        app_id = self.cloud.app(request.environment_name or DEFAULT_ENVIRONMENT, request.app_name)
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=app_id))

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        settings = api_pb2.EnvironmentSettings(image_builder_version=IMAGE_BUILDER_VERSION)
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id="en-fake",
                metadata=api_pb2.EnvironmentMetadata(name=DEFAULT_ENVIRONMENT, settings=settings),
            )
        )

    async def ImageGetOrCreate(self, stream: Stream[api_pb2.ImageGetOrCreateRequest, Any]) -> None:
        """The image of the definition (one per definition), its build started if it has none: answered at
        once, with the result only when it has been built (else the SDK joins the build)."""
        request = await stream.recv_message()
        assert request is not None
        image = self.builder.get_or_create(request)
        await stream.send_message(
            api_pb2.ImageGetOrCreateResponse(
                image_id=image.id,
                result=image.result if image.ready else None,
                metadata=api_pb2.ImageMetadata(image_builder_version=IMAGE_BUILDER_VERSION),
            )
        )

    async def ImageJoinStreaming(self, stream: Stream[api_pb2.ImageJoinStreamingRequest, Any]) -> None:
        """The build's logs after `last_entry_id` as they come, then its result; a long poll: ends
        without a result after `timeout` seconds (the SDK then joins again)."""
        request = await stream.recv_message()
        assert request is not None
        image = self.cloud.images.get(request.image_id)
        if image is None:
            raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
        offset = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
        async for entry, log in image.follow(offset, request.timeout or 55):
            await stream.send_message(
                api_pb2.ImageJoinStreamingResponse(task_logs=[log], entry_id=str(entry))
            )
        if image.result is not None:
            await stream.send_message(
                api_pb2.ImageJoinStreamingResponse(
                    result=image.result,
                    eof=True,
                    metadata=api_pb2.ImageMetadata(image_builder_version=IMAGE_BUILDER_VERSION),
                )
            )

    async def ImageFromId(self, stream: Stream[api_pb2.ImageFromIdRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        if request.image_id not in self.cloud.images:
            raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
        await stream.send_message(
            api_pb2.ImageFromIdResponse(
                image_id=request.image_id,
                metadata=api_pb2.ImageMetadata(image_builder_version=IMAGE_BUILDER_VERSION),
            )
        )

    # -- mounts (the build context of COPY/ADD)

    async def MountBatchedCheckExistence(
        self, stream: Stream[api_pb2.MountBatchedCheckExistenceRequest, Any]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        missing = [sha for sha in request.sha256_hex_hashes if not self.mounts.has(sha)]
        await stream.send_message(
            api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)
        )

    async def MountPutFile(self, stream: Stream[api_pb2.MountPutFileRequest, Any]) -> None:
        """Contents inline only: a file of 4 MiB or more comes as a blob (BlobCreate), which the fake lacks."""
        request = await stream.recv_message()
        assert request is not None
        if request.WhichOneof("data_oneof") == "data":
            try:
                await asyncio.to_thread(self.mounts.put, request.sha256_hex, request.data)
            except CloudError as e:
                raise refusal(e) from None
        await stream.send_message(api_pb2.MountPutFileResponse(exists=self.mounts.has(request.sha256_hex)))

    async def MountGetOrCreate(self, stream: Stream[api_pb2.MountGetOrCreateRequest, Any]) -> None:
        """An anonymous mount of uploaded files, or a named one (deployed, then looked up by name)."""
        request = await stream.recv_message()
        assert request is not None
        key = (request.namespace, request.environment_name or DEFAULT_ENVIRONMENT, request.deployment_name)
        if request.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
            if key not in self.mounts.named:
                raise GRPCError(Status.NOT_FOUND, f"Mount {request.deployment_name!r} not found")
            mount_id = self.mounts.named[key]
        else:
            try:
                mount_id = self.mounts.create(request.files)
            except CloudError as e:
                raise refusal(e) from None
            if request.deployment_name:
                self.mounts.named[key] = mount_id
        await stream.send_message(
            api_pb2.MountGetOrCreateResponse(
                mount_id=mount_id,
                handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex=mount_id),
            )
        )

    # -- sandboxes

    async def SandboxCreateV2(self, stream: Stream[api_pb2.SandboxCreateV2Request, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        definition = request.definition
        if definition.volume_mounts or definition.cloud_bucket_mounts or definition.mount_ids:
            raise GRPCError(Status.UNIMPLEMENTED, "the fake mounts no volumes, buckets or local files")
        env = inline_env(request.secret_sources)
        tags = {tag.tag_name: tag.tag_value for tag in request.tags}
        try:
            box = await self.cloud.create(request.app_id, definition, env, tags)
        except CloudError as e:
            raise refusal(e) from None
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=box.id,
                task_id=box.task_id,
                tunnels=tunnels(box),
                metadata=metadata(box),
                command_router_access=self._router_access(box),
            )
        )

    async def SandboxGetTaskIdV2(self, stream: Stream[api_pb2.SandboxGetTaskIdRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        box = self._sandbox(request.sandbox_id)
        # (an ended sandbox's task still serves its entrypoint's output; the SDK's exec refuses it)
        await stream.send_message(
            api_pb2.SandboxGetTaskIdResponse(task_id=box.task_id, task_result=box.result)
        )

    async def SandboxGetCommandRouterAccess(
        self, stream: Stream[api_pb2.SandboxGetCommandRouterAccessRequest, Any]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        if request.task_id:
            box = self.cloud.tasks.get(request.task_id)
            if box is None:
                raise GRPCError(Status.NOT_FOUND, f"task {request.task_id} not found")
        else:
            box = self._sandbox(request.sandbox_id)
        access = self._router_access(box)
        await stream.send_message(
            api_pb2.SandboxGetCommandRouterAccessResponse(jwt=access.jwt, url=access.url)
        )

    async def SandboxWaitV2(self, stream: Stream[api_pb2.SandboxWaitRequest, Any]) -> None:
        """A long poll: answers when the sandbox has ended or `timeout` seconds passed (no result yet)."""
        request = await stream.recv_message()
        assert request is not None
        box = self._sandbox(request.sandbox_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(box.finished.wait(), max(request.timeout, 0))
        result = box.result if box.finished.is_set() else None
        await stream.send_message(api_pb2.SandboxWaitResponse(result=result, metadata=metadata(box)))

    async def SandboxListV2(self, stream: Stream[api_pb2.SandboxListRequest, Any]) -> None:
        """Newest first, a page of those created before `before_timestamp`."""
        request = await stream.recv_message()
        assert request is not None
        wanted = {tag.tag_name: tag.tag_value for tag in request.tags}
        found = [
            box
            for box in self.cloud.sandboxes.values()
            if (request.include_finished or box.result is None)
            and (not request.app_id or box.app_id == request.app_id)
            and (not request.before_timestamp or box.created_at < request.before_timestamp)
            and all(box.tags.get(k) == v for k, v in wanted.items())
        ]
        found.sort(key=lambda box: box.created_at, reverse=True)
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=[info(box) for box in found[:100]]))

    async def SandboxGetFromNameV2(self, stream: Stream[api_pb2.SandboxGetFromNameRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        app_id = self.cloud.apps.get((request.environment_name or DEFAULT_ENVIRONMENT, request.app_name))
        for box in sorted(self.cloud.sandboxes.values(), key=lambda box: box.created_at, reverse=True):
            if (
                box.app_id == app_id
                and box.definition.name == request.sandbox_name
                and (box.result is None or request.include_terminated)
            ):
                await stream.send_message(
                    api_pb2.SandboxGetFromNameResponse(sandbox_id=box.id, metadata=metadata(box))
                )
                return
        raise GRPCError(Status.NOT_FOUND, f"Sandbox with name '{request.sandbox_name}' not found")

    async def SandboxTagsSetV2(self, stream: Stream[api_pb2.SandboxTagsSetRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self._sandbox(request.sandbox_id).tags = {tag.tag_name: tag.tag_value for tag in request.tags}
        await stream.send_message(Empty())

    async def SandboxTagsGetV2(self, stream: Stream[api_pb2.SandboxTagsGetRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        tags = self._sandbox(request.sandbox_id).tags
        await stream.send_message(
            api_pb2.SandboxTagsGetResponse(
                tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in tags.items()]
            )
        )

    async def SandboxTerminateV2(self, stream: Stream[api_pb2.SandboxTerminateRequest, Any]) -> None:
        """Ends the sandbox (every process killed) before answering; an ended one answers its result."""
        request = await stream.recv_message()
        assert request is not None
        box = self._sandbox(request.sandbox_id)
        existing = box.result
        await self.cloud.finish(
            box, api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
        )
        await stream.send_message(api_pb2.SandboxTerminateResponse(existing_result=existing))

    async def SandboxGetTunnelsV2(self, stream: Stream[api_pb2.SandboxGetTunnelsRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        box = self._sandbox(request.sandbox_id)
        await stream.send_message(
            api_pb2.SandboxGetTunnelsResponse(
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                tunnels=tunnels(box),
            )
        )
