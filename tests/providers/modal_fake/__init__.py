"""A fake of the Modal cloud for tests: the unmodified `modal` SDK (1.6; blocking calls and `.aio`) talks its
real gRPC protocol to it, and sandboxes are real: commands run in bubblewrap, files are on disk.

    from tests.providers.modal_fake import FakeModal

    with FakeModal() as fake:
        os.environ.update(fake.env)   # MODAL_SERVER_URL, MODAL_TOKEN_ID, MODAL_TOKEN_SECRET, MODAL_CONFIG_PATH
        fake.inject(r"/SandboxCreateV2$", status=grpclib.const.Status.UNAVAILABLE, times=2)
        fake.calls(r"/TaskExecStart$"); fake.sandboxes(); fake.sandbox_dir(id); fake.tags(); fake.builds()

`python -m tests.providers.modal_fake` serves it in the foreground and prints the environment to use.

How the SDK gets there (recorded with a spy server during exploration): App.lookup is AppGetOrCreate;
then EnvironmentGetOrCreate (its image_builder_version must be one the SDK supports, else VersionError);
ImageGetOrCreate (an answer with result SUCCESS skips the build; without a result the SDK waits with
ImageJoinStreaming, a long poll of the build's logs and then its result; a COPY's context is uploaded
first: MountBatchedCheckExistence, MountPutFile, MountGetOrCreate); AuthTokenGet (a JWT whose `exp` the
SDK reads); SandboxCreateV2; SandboxGetTaskIdV2; SandboxGetCommandRouterAccess (a JWT and the URL of the
task command router, a second gRPC service that Modal runs on each sandbox's worker and that this fake
serves on its own port: the SDK allows plain http to a router when the server URL is localhost).
`sb.exec` and everything in a running sandbox go to the router: TaskExecStart / TaskExecStdioRead (from an
offset; all output is kept) / TaskExecStdinWrite(Stream) / TaskExecPoll / TaskExecWait, the entrypoint's
SandboxStdioReadV2 / SandboxStdinWriteV2, TaskSnapshotFilesystem. `sb.filesystem` execs
`/__modal/.bin/modal-sandbox-fs-tools '<json>'`, which every fake sandbox has (`_fs_tools.py`).

A sandbox: the host's `/` read-only under an overlay whose upper directory is the sandbox's own (every write
lands there: `fake.sandbox_dir(id) / "upper"`), its own empty /root (HOME) and /tmp; commands run as root
with no capabilities, in `/` unless the sandbox or the exec names a workdir. Faithful to Modal, as its own
integration tests show: a command killed by a signal ends with `signal` (returncode 128 + N); an exec
timeout kills the command (SIGKILL: 137, though the SDK's own deadline usually answers -1 first);
terminate makes `wait` return 137 (TERMINATED), the sandbox timeout 124 (TIMEOUT, SandboxTimeoutError);
an entrypoint's exit status is the sandbox's.

Guessed (not documented by Modal), and so chosen:
* An exec whose workdir is missing: INVALID_ARGUMENT (the SDK's InvalidError); a command that is not there:
  exit status 127 and a message on stderr, like a shell.
* Writing to an ended command's stdin: FAILED_PRECONDITION (ConflictError: what the SDK's file API expects).
* A router call for a task that has ended or is unknown: NOT_FOUND; an ended sandbox still serves its
  entrypoint's output. A JWT that the fake did not issue, has expired or is for another task: UNAUTHENTICATED.
* Commands see PATH, HOME=/root, MODAL_TASK_ID and MODAL_SANDBOX_ID besides the env given.
* idle_timeout: the sandbox ends (IDLE_TIMEOUT) once no exec has run, started or had stdin written for
  that long; the entrypoint does not count as activity.
* Memory snapshots (TaskSnapshotMemory): FAILED_PRECONDITION unless the sandbox was created with
  `_experimental_enable_snapshot=True`, then UNIMPLEMENTED: the fake snapshots files only.

What the fake does not do, and what the SDK then sees:
* Images (`_images.py`) are built, but on the host's file system: a registry image (`FROM python:3.11-slim`,
  any repository of the fake's short list; another fails like a pull) and Modal's own base images
  (`debian_slim`, `from_scratch`: prebuilt, never built) are the host's `/`; RUN lines run in an overlay over
  it (`sh -c`, as root, with the host's network), COPY/ADD copy from the uploaded context, ENV and WORKDIR
  become the defaults of the image's sandboxes (a sandbox's own workdir and env win). The same definition
  is the same image, built once; a failed build (its exception: the command's output and exit code,
  where Modal may only point at the build logs) is tried again on the next use. `snapshot_filesystem`
  images are a copy of the upper directory and /tmp, with its whiteouts (deleted files stay deleted).
  `Image.from_id` knows the fake's own ids only.
* A RUN line that is only a `pip install` / `python -m pip install` (what `pip_install` writes) is skipped:
  the fake has no network, and an image like `from_registry("python:3.11-slim").pip_install(["numpy"])`
  must still make sandboxes (the package is not there: the host's Python is). Other package managers run
  as written and fail without network (`apt_install`: ImageBuildError). Not built either (the build fails,
  ImageBuildError): multi-stage Dockerfiles and `COPY --from`, RUN options (`--mount`...), USER other than
  root, ADD of a URL, `add_python` (the SDK looks its mount up by name: NotFoundError), `run_function`,
  build secrets (stored secrets); a context file of 4 MiB or more (the SDK uploads it as a blob:
  BlobCreate, UNIMPLEMENTED). Ignored: `--chown` (files are root's), `force_build` (a built image is
  kept), GPUs, CMD, ENTRYPOINT, LABEL, EXPOSE and the like.
* Resources (cpu, memory) and regions are kept and listed, not enforced; GPUs, PTYs, volumes, cloud bucket
  mounts, local mounts, stored secrets (by id), sidecars, named-sandbox renames, connect tokens, logs,
  directory snapshots and mounts, `set_network_access`, file watching: UNIMPLEMENTED (the SDK's
  UnimplementedError), or the fs tool's NotSupported (InvalidError). The V1 API (MODAL_SANDBOX_V2=0) is
  not served.
* Network: a sandbox shares the host's network unless it is blocked or its CIDR allow-list does not cover
  127.0.0.1 (the only network the fake can reach): then each command has its own empty network namespace
  (its own loopback, not shared with the sandbox's other commands). Domain allow-lists are not enforced.
* Tunnels: a sandbox shares the host's network, so the tunnel of port P is 127.0.0.1:P (host/port and
  unencrypted_host/unencrypted_port alike), without TLS: `tunnel.url` says https but is plain http.
* Each command mounts the sandbox's overlay anew: a long-running command may not see files another
  command created after it started outside /tmp (overlayfs does not support one upper directory in two
  mounts; the kernel logs a warning). /tmp is a plain directory, shared at once.
* The host's `/` shows through (read-only) everywhere but /root and /tmp, the fake's own files included
  when its root is not under /tmp. Only the root file system: the host's other mounts (but /proc, /dev)
  are empty directories in a sandbox.
"""

from .server import FakeModal

__all__ = ["FakeModal"]
