"""Registers the memory provider as a test's subprocess starts (tests/providers/memory: subprocess_env()), so
that the `grainchain` command and the pytest it runs know it. Inert without $GRAINCHAIN_TEST_MEMORY."""

import json
import os

if _declared := os.environ.get("GRAINCHAIN_TEST_MEMORY"):
    from grainchain import registry
    from tests.providers.memory import declaration

    registry.register(declaration(**json.loads(_declared)), replace=True)
