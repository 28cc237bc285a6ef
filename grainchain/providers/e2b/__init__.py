"""The e2b provider: E2B sandboxes through the official e2b SDK (`pip install 'grainchain[e2b]'`)."""

# The SDK's async names and their blocking twins, and the hand-written pairs of _sdk.py, for the sync twin
# of _async/ (read by codegen/sync.py; `AsyncSandbox` → `Sandbox` is a global rename already)
SYNC_RENAMES = {
    "AsyncCommandHandle": "CommandHandle",
    "astart_command": "start_command",
    "await_command": "wait_command",
    "adisconnect": "disconnect",
    "ACall": "Call",
}
