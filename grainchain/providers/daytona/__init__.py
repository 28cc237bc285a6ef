"""The daytona provider (planned: its adapter comes with its issue; its provider_config is checked already)."""
