"""The docker provider: containers through the Engine API (httpx over the unix socket)."""
