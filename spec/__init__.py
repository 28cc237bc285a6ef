"""The capability spec: grainchain.yaml (the source of truth), its JSON Schema and the validator."""
