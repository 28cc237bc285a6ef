"""The task command router (`modal.task_command_router.TaskCommandRouter`), which Modal runs on the worker
of each sandbox: commands (exec, their output and stdin, their end), the entrypoint's stdio and snapshots.
Each method is the handler of the RPC of its name (see `_guard.Service`); the JWT of the call must be one
the fake issued for the task named in the request."""

from __future__ import annotations

from typing import Any, Literal

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from modal_proto import task_command_router_pb2 as sr_pb2

from tests.providers._fakebox import Stream as Output

from ._cloud import Cloud, CloudError, Exec, Sandbox
from ._control import inline_env, refusal
from ._guard import ROUTER_CLAIMS

FILE_DESCRIPTORS: dict[int, Literal["stdout", "stderr"]] = {
    sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT: "stdout",
    sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR: "stderr",
}
MEMORY_SNAPSHOT_DISABLED = "Memory snapshots are not enabled for this Sandbox"


def exit_status(run: Exec) -> dict[str, int]:
    """How Modal reports an ended command: `code`, or `signal` when a signal killed it (the SDK's
    returncode is then 128 + signal). Nothing while it runs."""
    if run.ended is None:
        return {}
    if run.ended.signal is not None:
        return {"signal": run.ended.signal}
    return {"code": run.ended.code or 0}


class Router:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def _task(self, task_id: str) -> Sandbox:
        if ROUTER_CLAIMS.get().get("task_id") != task_id:
            raise GRPCError(Status.UNAUTHENTICATED, f"token is not for task {task_id}")
        try:
            return self.cloud.task(task_id)
        except CloudError as e:
            raise refusal(e) from None

    def _ended_or_running(self, task_id: str) -> Sandbox:
        """A task that may have ended: its entrypoint's output is still served."""
        box = self.cloud.tasks.get(task_id)
        if box is None or ROUTER_CLAIMS.get().get("task_id") != task_id:
            self._task(task_id)  # (refuses)
        assert box is not None
        return box

    def _exec(self, task_id: str, exec_id: str) -> Exec:
        self._task(task_id)
        try:
            return self.cloud.exec(task_id, exec_id)
        except CloudError as e:
            raise refusal(e) from None

    def _main(self, task_id: str) -> Exec:
        main = self._task(task_id).main
        if main is None:
            raise GRPCError(Status.FAILED_PRECONDITION, "the Sandbox has no entrypoint command")
        return main

    # -- commands

    async def TaskExecStart(self, stream: Stream[sr_pb2.TaskExecStartRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        box = self._task(request.task_id)
        if request.HasField("pty_info"):
            raise GRPCError(Status.UNIMPLEMENTED, "the fake runs no PTY commands")
        if request.container_id:
            raise GRPCError(Status.NOT_FOUND, f"container {request.container_id} not found")
        if request.stderr_config == sr_pb2.TASK_EXEC_STDERR_CONFIG_STDOUT:
            raise GRPCError(Status.INVALID_ARGUMENT, "stderr to stdout is not supported")
        if not request.command_args:
            raise GRPCError(Status.INVALID_ARGUMENT, "command_args must not be empty")
        env = {**inline_env(request.secret_sources), **dict(request.env)}
        timeout = request.timeout_secs if request.HasField("timeout_secs") and request.timeout_secs else None
        try:
            await self.cloud.start_exec(
                box,
                request.exec_id,
                list(request.command_args),
                env,
                request.workdir if request.HasField("workdir") else None,
                timeout,
                stdout=request.stdout_config == sr_pb2.TASK_EXEC_STDOUT_CONFIG_PIPE,
                stderr=request.stderr_config == sr_pb2.TASK_EXEC_STDERR_CONFIG_PIPE,
            )
        except CloudError as e:
            raise refusal(e) from None
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdioRead(self, stream: Stream[sr_pb2.TaskExecStdioReadRequest, Any]) -> None:
        """The output from the request's offset on, as it comes, until the command has ended."""
        request = await stream.recv_message()
        assert request is not None
        run = self._exec(request.task_id, request.exec_id)
        name = FILE_DESCRIPTORS.get(request.file_descriptor)
        if name is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"file descriptor {request.file_descriptor}")
        async for chunk in run.read(name, request.offset):
            await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=chunk))

    async def TaskExecStdinWrite(self, stream: Stream[sr_pb2.TaskExecStdinWriteRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        run = self._exec(request.task_id, request.exec_id)
        try:
            await run.write_stdin(request.offset, request.data, request.eof)
        except CloudError as e:
            raise refusal(e) from None
        self.cloud.touch(run.sandbox)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(
        self, stream: Stream[sr_pb2.TaskExecStdinWriteStreamRequest, Any]
    ) -> None:
        """Start (its offset must be what was written so far), data, then end (EOF)."""
        first = await stream.recv_message()
        if first is None or first.WhichOneof("payload") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be start")
        run = self._exec(first.start.task_id, first.start.exec_id)
        if first.start.offset != run.stdin_written:
            raise GRPCError(Status.FAILED_PRECONDITION, f"stdin offset mismatch: at {run.stdin_written}")
        try:
            async for message in stream:
                which = message.WhichOneof("payload")
                if which == "data":
                    await run.write_stdin(run.stdin_written, message.data, False)
                elif which == "end":
                    await run.write_stdin(run.stdin_written, b"", True)
                    break
                else:
                    raise GRPCError(Status.INVALID_ARGUMENT, "expected data or end")
        except CloudError as e:
            raise refusal(e) from None
        self.cloud.touch(run.sandbox)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[sr_pb2.TaskExecStdinStatusRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        run = self._exec(request.task_id, request.exec_id)
        await stream.send_message(
            sr_pb2.TaskExecStdinStatusResponse(num_bytes_written=run.stdin_written, closed=run.stdin_closed)
        )

    async def TaskExecPoll(self, stream: Stream[sr_pb2.TaskExecPollRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        run = self._exec(request.task_id, request.exec_id)
        await stream.send_message(sr_pb2.TaskExecPollResponse(**exit_status(run)))

    async def TaskExecWait(self, stream: Stream[sr_pb2.TaskExecWaitRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        run = self._exec(request.task_id, request.exec_id)
        await run.done.wait()
        await stream.send_message(sr_pb2.TaskExecWaitResponse(**exit_status(run)))

    # -- the entrypoint

    async def SandboxStdioReadV2(self, stream: Stream[sr_pb2.SandboxStdioReadV2Request, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        box = self._ended_or_running(request.task_id)
        stdout = request.file_descriptor == sr_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDOUT
        name: Output = "stdout" if stdout else "stderr"
        if box.main is None:  # nothing runs that could write: the stream ends with the sandbox
            await box.finished.wait()
            return
        offset = request.offset
        async for chunk in box.main.read(name, offset):
            await stream.send_message(sr_pb2.SandboxStdioReadV2Response(data=chunk, starting_offset=offset))
            offset += len(chunk)

    async def SandboxStdinWriteV2(self, stream: Stream[sr_pb2.SandboxStdinWriteV2Request, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        main = self._main(request.task_id)
        try:
            await main.write_stdin(request.offset, request.data, request.eof)
        except CloudError as e:
            raise refusal(e) from None
        await stream.send_message(sr_pb2.SandboxStdinWriteV2Response())

    # -- snapshots

    async def TaskSnapshotFilesystem(self, stream: Stream[sr_pb2.TaskSnapshotFilesystemRequest, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        box = self._task(request.task_id)
        if request.container_id:
            raise GRPCError(Status.NOT_FOUND, f"container {request.container_id} not found")
        image = await self.cloud.snapshot(box)
        await stream.send_message(sr_pb2.TaskSnapshotFilesystemResponse(image_id=image.id))

    async def TaskSnapshotMemory(self, stream: Stream[sr_pb2.TaskSnapshotMemoryRequest, Any]) -> None:
        """Not supported: FAILED_PRECONDITION for a sandbox created without `_experimental_enable_snapshot`
        (as Modal refuses it), UNIMPLEMENTED otherwise."""
        request = await stream.recv_message()
        assert request is not None
        box = self._task(request.task_id)
        if not box.definition.enable_snapshot:
            raise GRPCError(Status.FAILED_PRECONDITION, MEMORY_SNAPSHOT_DISABLED)
        raise GRPCError(Status.UNIMPLEMENTED, "the fake takes no memory snapshots")
