"""Which RPCs the modal SDK makes: a grpclib server answering every ModalClient RPC with UNIMPLEMENTED, logging the name."""
import asyncio, os, sys, threading, time
from grpclib.server import Server
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from modal_proto import api_grpc, api_pb2

calls = []
def make(name):
    async def handler(self, stream):
        req = await stream.recv_message()
        calls.append(name); REQS[name] = req
        impl = IMPL.get(name)
        if impl is None:
            raise GRPCError(Status.UNIMPLEMENTED, name)
        await stream.send_message(impl(req))
    handler.__name__ = name
    return handler

def token():
    import base64, json
    h = base64.urlsafe_b64encode(json.dumps({"alg":"none"}).encode()).rstrip(b"=").decode()
    p = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time())+3600}).encode()).rstrip(b"=").decode()
    return f"{h}.{p}.sig"

IMPL = {
    "ClientHello": lambda r: api_pb2.ClientHelloResponse(),
    "AuthTokenGet": lambda r: api_pb2.AuthTokenGetResponse(token=token()),
    "AppGetOrCreate": lambda r: api_pb2.AppGetOrCreateResponse(app_id="ap-1"),
    "EnvironmentGetOrCreate": lambda r: api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-1", metadata=api_pb2.EnvironmentMetadata(name="main", settings=api_pb2.EnvironmentSettings(image_builder_version="2025.06"))),
    "ImageGetOrCreate": lambda r: api_pb2.ImageGetOrCreateResponse(image_id="im-1", result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)),
    "SandboxCreate": lambda r: api_pb2.SandboxCreateResponse(sandbox_id="sb-1"),
    "SandboxCreateV2": lambda r: api_pb2.SandboxCreateV2Response(sandbox_id="sb-1"),
    "SandboxGetTaskId": lambda r: api_pb2.SandboxGetTaskIdResponse(task_id="ta-1"),
    "SandboxGetTaskIdV2": lambda r: api_pb2.SandboxGetTaskIdResponse(task_id="ta-1"),
    "TaskGetCommandRouterAccess": lambda r: api_pb2.TaskGetCommandRouterAccessResponse(jwt=token(), url=os.environ["MODAL_SERVER_URL"]),
}
REQS = {}
Spy = type("Spy", (api_grpc.ModalClientBase,), {n: make(n) for n in api_grpc.ModalClientBase.__abstractmethods__})

async def serve(port_holder):
    server = Server([Spy()])
    await server.start("127.0.0.1", 0)
    port_holder.append(server._server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()

ports = []
threading.Thread(target=lambda: asyncio.run(serve(ports)), daemon=True).start()
while not ports: time.sleep(0.01)
os.environ["MODAL_SERVER_URL"] = f"http://127.0.0.1:{ports[0]}"
os.environ["MODAL_TOKEN_ID"] = "ak-x"; os.environ["MODAL_TOKEN_SECRET"] = "as-x"
os.environ["MODAL_CONFIG_PATH"] = "/tmp/modalspy/none.toml"
import modal
try:
    app = modal.App.lookup("grainchain", create_if_missing=True)
    sb = modal.Sandbox.create("sleep", "infinity", app=app, image=modal.Image.from_registry("python:3.11-slim"), timeout=60)
    print("created", sb.object_id)
    p = sb.exec("echo", "hi")
    print("exec", p.stdout.read())
except Exception as e:
    print("stopped at:", type(e).__name__, str(e)[:200])
print("RPCs:", calls)
for n in ("SandboxCreateV2",):
    if n in REQS: print(n, str(REQS[n])[:1500])
