"""One folder per provider: `_async/` (the hand-written adapter), `_sync/` (its generated twin), `config.py`
(its typed provider_config) and its flavour-free helpers. See docs/writing-a-provider.md."""
