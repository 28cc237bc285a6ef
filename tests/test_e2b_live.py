"""tests/test_e2b.py's contract tests against the real E2B service (those that inject no fault):

    E2B_API_KEY=... .venv/bin/pytest -m live tests/test_e2b_live.py     (E2B_TEMPLATE, E2B_DOMAIN optional)

Deselected by default (pyproject's addopts: -m 'not live'); skipped, saying why, without E2B_API_KEY.
Every sandbox is labelled with this run's id (provider_config `metadata`, through [providers.e2b] defaults)
and lives at most 5 minutes; what a failed test left behind is swept by that label at the end."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.test_e2b import (  # noqa: F401 (collected here again, against the real service)
    test_background_process_handle,
    test_bad_network_is_a_configuration_error,
    test_execute_returns_output_and_exit_codes,
    test_files_round_trip_binary_and_metadata,
    test_filesystem_snapshot_restore_keeps_the_sandbox_id,
    test_limits_are_refused_not_ignored,
    test_list_and_connect_find_only_grainchain_sandboxes,
    test_output_cap,
    test_streaming_callbacks_see_output_as_it_comes,
    test_terminate_pauses_and_wake_up_resumes,
    test_timeout_raises_with_partial_output_and_leaves_nothing_running,
    test_unknown_template_is_a_configuration_error,
    test_wrong_api_key_is_an_authentication_error,
)

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]
RUN = uuid.uuid4().hex[:12]
LABEL = "live_test_run"
LIFETIME = 300  # seconds: what a crashed run leaves ends by itself


@pytest.fixture(autouse=True)
def live_e2b(monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.environ.get("E2B_API_KEY"):
        pytest.skip("live e2b tests need E2B_API_KEY (a key of the real service) in the environment")
    defaults = {"e2b": {"lifetime": LIFETIME, "metadata": {LABEL: RUN}}}
    monkeypatch.setenv("GRAINCHAIN_PROVIDERS", json.dumps(defaults))


@pytest.fixture(scope="module", autouse=True)
def sweep() -> Iterator[None]:
    """Kill what this run left (a failed test's sandbox): every E2B sandbox with this run's label."""
    key = os.environ.get("E2B_API_KEY")
    yield
    if not key:
        return
    import e2b

    paginator = e2b.Sandbox.list(query=e2b.SandboxQuery(metadata={LABEL: RUN}), api_key=key)
    while paginator.has_next:
        for info in paginator.next_items():
            e2b.Sandbox.kill(info.sandbox_id, api_key=key)
