"""Command plumbing every provider shares (flavour-free): the environment markers that tag a sandbox's
processes."""

from __future__ import annotations

# Every process a sandbox starts carries these; tree kills and leak checks look for them.
SANDBOX_MARKER = "GRAINCHAIN_SANDBOX_ID"
EXEC_MARKER = "GRAINCHAIN_EXEC_ID"
