"""The conformance suite against the e2b provider, its SDK pointed at the in-repo fake of E2B
(tests/providers/e2b_fake): every feature the spec declares for e2b, judged as `grainchain conformance e2b`
judges it. The async client here; .ci/run drives the sync one through `grainchain conformance e2b` against
the fake run standalone (`python -m tests.providers.e2b_fake`), as a provider author would.

The fake starts when this module is imported: the suite's class attributes (its SandboxConfig) name the
fake's endpoints, and the plugin checks that the provider starts before any fixture of this module runs."""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from grainchain_conformance import ConformanceSuite
from tests.providers.e2b_fake import FakeE2B

FAKE = FakeE2B().start()
atexit.register(FAKE.stop)  # (also stopped by the module fixture below, when the tests ran)


@pytest.fixture(scope="module", autouse=True)
def stop_the_fake() -> Iterator[None]:
    yield
    FAKE.stop()


@pytest.fixture(autouse=True)
def point_the_sdk_at_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """For what the suite does beside its SandboxConfig (the SDK reads these; tests/conftest.py clears them)."""
    for name, value in FAKE.env.items():
        monkeypatch.setenv(name, value)


class TestE2bConformance(ConformanceSuite):
    provider = "e2b"
    clients = "async"
    config: ClassVar[dict[str, Any]] = {
        "provider_config": {
            "api_key": FAKE.api_key,
            "api_url": FAKE.env["E2B_API_URL"],
            "sandbox_url": FAKE.env["E2B_SANDBOX_URL"],
        }
    }
