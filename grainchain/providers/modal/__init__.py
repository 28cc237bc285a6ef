"""The modal provider: Modal sandboxes through the official modal SDK (`pip install 'grainchain[modal]'`)."""

# for the sync twin of _async/ (read by codegen/sync.py; the SDK's `X.aio` → `X` needs no entry)
SYNC_RENAMES = {
    "AsyncModalBackend": "ModalBackend",
    "AsyncModalAdapter": "ModalAdapter",
    "ACall": "Call",
}
