"""The docker provider: containers through the Engine API (httpx over the unix socket)."""

# httpx's async names and their blocking twins, for the sync twin of _async/ (read by codegen/sync.py)
SYNC_RENAMES = {
    "AsyncClient": "Client",
    "AsyncHTTPTransport": "HTTPTransport",
    "aiter_raw": "iter_raw",
    "aiter_bytes": "iter_bytes",
    "aiter_lines": "iter_lines",
    "aread": "read",
}
