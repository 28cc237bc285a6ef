"""tests/test_modal.py's contract tests against the real Modal service (those that inject no fault and
need no server on this machine):

    MODAL_TOKEN_ID=... MODAL_TOKEN_SECRET=... .venv/bin/pytest -m live tests/test_modal_live.py

Deselected by default (pyproject's addopts: -m 'not live'); skipped, saying why, without a token pair.
Every sandbox is tagged with this run's id (provider_config `tags`, through [providers.modal] defaults) and
lives at most 5 minutes; what a failed test left behind is terminated by that tag at the end."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.test_modal import (  # noqa: F401 (collected here again, against the real service)
    test_background_process_handle,
    test_bad_provider_config_is_a_configuration_error,
    test_execute_returns_output_and_exit_codes,
    test_files_round_trip_binary_and_metadata,
    test_filesystem_snapshot_restore_keeps_the_sandbox_id,
    test_limits_are_refused_not_ignored,
    test_list_and_connect_find_only_grainchain_sandboxes,
    test_output_cap,
    test_streaming_callbacks_see_output_as_it_comes,
    test_terminate_keeps_files_not_processes_and_wake_up_brings_them_back,
    test_the_api_documents_image_example_runs,
    test_timeout_raises_with_partial_output_and_leaves_nothing_running,
    test_wrong_token_is_an_authentication_error,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::modal.exception.AsyncUsageWarning"),
]
RUN = uuid.uuid4().hex[:12]
TAG = "live_test_run"
LIFETIME = 300  # seconds: what a crashed run leaves ends by itself


def _credentials() -> bool:
    return bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))


@pytest.fixture(autouse=True)
def live_modal(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _credentials():
        pytest.skip(
            "live modal tests need MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (a token of the real service)"
        )
    defaults = {"modal": {"lifetime": LIFETIME, "tags": {TAG: RUN}}}
    monkeypatch.setenv("GRAINCHAIN_PROVIDERS", json.dumps(defaults))


@pytest.fixture(scope="module", autouse=True)
def sweep() -> Iterator[None]:
    """Terminate what this run left (a failed test's sandbox): every Modal sandbox with this run's tag."""
    yield
    if not _credentials():
        return
    import modal

    app = modal.App.lookup("grainchain", create_if_missing=True)
    for sandbox in modal.Sandbox.list(app_id=app.app_id, tags={TAG: RUN}):
        sandbox.terminate()
