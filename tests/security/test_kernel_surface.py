"""Kernel attack surface of a default local sandbox whose root is the host's root (no user namespace):
syscalls docker's default seccomp profile blocks must be blocked here too."""

from __future__ import annotations

import json

import pytest
from _attacks import isolated_sandbox, python_in, syscall_numbers

EPERM, ENOSYS = 1, 38

# Each probe prints {"ret": <return value>, "errno": <errno>} of one syscall. None changes anything that
# outlives the probe: the key goes to the probe's own process keyring, the user namespace is the probe's own.
PROBES = {
    # add_key("user", "grainchain-redteam", "x", 1, KEY_SPEC_PROCESS_KEYRING)
    "add_key": "libc.syscall(N['add_key'], b'user', b'grainchain-redteam', b'x', 1, -2)",
    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, create=0): the host root's user keyring
    "keyctl": "libc.syscall(N['keyctl'], 0, -4, 0, 0, 0)",
    # unshare(CLONE_NEWUSER): a new user namespace, where the sandbox's root gets every capability
    "unshare_user": "libc.syscall(N['unshare'], 0x10000000)",
    # mount("none", "/tmp", "tmpfs", 0, NULL)
    "mount": "libc.syscall(N['mount'], b'none', b'/tmp', b'tmpfs', 0, None)",
}

PROBE = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
N = {numbers}
ret = {call}
print(json.dumps({{"ret": ret, "errno": ctypes.get_errno()}}))
"""


@pytest.mark.parametrize("probe", list(PROBES))
def test_blocked_syscall(probe: str) -> None:
    """Calls add_key/keyctl (the kernel keyring is shared with the host: no user namespace), unshare of a
    user namespace (full capabilities over new namespaces: a large kernel surface) or mount inside a default
    sandbox. A vulnerable grainchain (no seccomp filter) lets the call reach the kernel, so it succeeds or
    fails with a kernel errno other than EPERM/ENOSYS."""
    script = PROBE.format(numbers=json.dumps(syscall_numbers()), call=PROBES[probe])
    with isolated_sandbox() as sandbox:
        seen = json.loads(python_in(sandbox, script))
    assert seen["ret"] == -1, f"{probe} succeeded inside the sandbox (returned {seen['ret']})"
    if probe != "mount":  # mount needs CAP_SYS_ADMIN anyway: EPERM either way
        assert seen["errno"] in (EPERM, ENOSYS), (
            f"{probe} reached the kernel (errno {seen['errno']}), not blocked"
        )


def test_seccomp_filter_active() -> None:
    """Reads Seccomp from /proc/self/status inside a default sandbox; a vulnerable grainchain runs
    commands with no seccomp filter (0) where docker runs them filtered (2)."""
    with isolated_sandbox() as sandbox:
        status = sandbox.execute("grep '^Seccomp:' /proc/self/status").stdout.split()
    assert status[-1:] == ["2"], f"commands in the sandbox run with {' '.join(status) or 'no Seccomp line'}"
