"""The e2b provider (planned: its adapter comes with the e2b issue; its provider_config is checked already)."""
