"""A fake of the E2B cloud for tests: the unmodified `e2b` SDK talks its real wire protocols to it (the
REST control plane, envd's Connect-RPC process and filesystem services, envd's HTTP `/files`, over
HTTP/1.1), and commands really run, each in bubblewrap with the sandbox's own /home/user and /tmp.

    from tests.providers.e2b_fake import FakeE2B    # (with the repository on sys.path)

    with FakeE2B() as fake:
        os.environ.update(fake.env)   # E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, E2B_DEBUG
        fake.inject(r"^/process\\.Process/Start$", drop_stream=True)
        fake.requests(r"^/v2/sandboxes$")

`python -m tests.providers.e2b_fake` serves it in the foreground and prints the environment to use.

What the fake does not do, and what the SDK then sees:
* PTY processes (`sandbox.pty`, `Update`): Connect UNIMPLEMENTED, a SandboxException.
* Directory watching (`files.watch_dir`): Connect UNIMPLEMENTED, a SandboxException.
* Volumes (`volume_mounts`), template builds, secrets, MCP gateway: 400/404 from the API, or the
  command that is not there (`mcp-gateway`) failing.
* Snapshots, fork, and a pause with mode "filesystem" keep files only: a sandbox started from a snapshot
  (or forked) starts with the files of /home/user and /tmp, no processes or memory, whatever the mode;
  the answer to create_snapshot says so (`fakeLimitation`, header `x-fake-e2b-limitation`).
* A full pause keeps processes (SIGSTOP) and continues them on resume (SIGCONT); connections to the
  sandbox are dropped meanwhile, as in E2B.
* Commands run as the fake's own uid (HOME=/home/user, USER=user); the sandbox's own files are reported
  as owned by `user`. The rest of the host is a read-only view: writes there fail with EROFS
  ("read-only file system"), where envd (root) would write.
* File downloads are never gzip-encoded (identity is always a valid answer); uploads may be.
* `get_metrics` reports disk usage only (CPU and memory are zeros).
"""

from ._sandbox import SNAPSHOT_LIMITATION
from .server import FakeE2B

__all__ = ["SNAPSHOT_LIMITATION", "FakeE2B"]
