"""The memory provider's adapter, async source of the generated `_sync/` twin."""
