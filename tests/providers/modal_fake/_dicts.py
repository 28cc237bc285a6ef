"""Modal Dicts in the fake: named key-value stores of an environment (the modal adapter keeps grainchain's
snapshots and terminated sandboxes in one). Keys and values are the SDK's serialized bytes, kept as they
came; a Dict lives as long as the fake."""

from __future__ import annotations

import threading
from typing import Any

from google.protobuf.empty_pb2 import Empty  # type: ignore[import-untyped]
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from modal_proto import api_pb2

from ._cloud import DEFAULT_ENVIRONMENT, new_id

CREATE = (api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING, api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL)


class Dicts:
    """The Dict RPCs of ModalClient (a mixin of the control plane)."""

    def __init__(self) -> None:
        self.dict_ids: dict[tuple[str, str], str] = {}  # (environment, name) → id
        self.dicts: dict[str, dict[bytes, bytes]] = {}
        self.dict_lock = threading.Lock()  # (tests read them from their own thread)

    def _dict(self, dict_id: str) -> dict[bytes, bytes]:
        found = self.dicts.get(dict_id)
        if found is None:
            raise GRPCError(Status.NOT_FOUND, f"Dict {dict_id} not found")
        return found

    async def DictGetOrCreate(self, stream: Stream[api_pb2.DictGetOrCreateRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        key = (request.environment_name or DEFAULT_ENVIRONMENT, request.deployment_name)
        with self.dict_lock:
            dict_id = self.dict_ids.get(key) if request.deployment_name else None
            if dict_id is None:
                if request.object_creation_type not in CREATE:
                    raise GRPCError(Status.NOT_FOUND, f"Dict '{request.deployment_name}' not found")
                dict_id = new_id("di-")
                self.dicts[dict_id] = {e.key: e.value for e in request.data}
                if request.deployment_name:
                    self.dict_ids[key] = dict_id
        await stream.send_message(api_pb2.DictGetOrCreateResponse(dict_id=dict_id))

    async def DictHeartbeat(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(Empty())

    async def DictGet(self, stream: Stream[api_pb2.DictGetRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        with self.dict_lock:
            value = self._dict(request.dict_id).get(request.key)
        answer = api_pb2.DictGetResponse(found=value is not None, value=value or b"")
        await stream.send_message(answer)

    async def DictUpdate(self, stream: Stream[api_pb2.DictUpdateRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        with self.dict_lock:
            entries = self._dict(request.dict_id)
            created = False
            for entry in request.updates:
                if request.if_not_exists and entry.key in entries:
                    continue
                entries[entry.key] = entry.value
                created = True
        await stream.send_message(api_pb2.DictUpdateResponse(created=created))

    async def DictPop(self, stream: Stream[api_pb2.DictPopRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        with self.dict_lock:
            value = self._dict(request.dict_id).pop(request.key, None)
        await stream.send_message(api_pb2.DictPopResponse(found=value is not None, value=value or b""))

    async def DictContents(self, stream: Stream[api_pb2.DictContentsRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        with self.dict_lock:
            entries = list(self._dict(request.dict_id).items())
        for key, value in entries:
            await stream.send_message(
                api_pb2.DictEntry(key=key if request.keys else b"", value=value if request.values else b"")
            )
