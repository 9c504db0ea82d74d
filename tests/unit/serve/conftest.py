"""Fixtures of the server tests: one tiny trained detector and its scans for the whole session, and apps over it.

Training takes about a minute, so it happens once (session scope); so does the shared app, whose detection
worker process pays torch's import once. Tests that need other settings build their own app with `make_app`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_waits import wait_ready

from noduleflow.serve import ServeSettings, create_app

# small limits, so that the hostile tests stay small; the test scans (69 x 128 x 128 int16) are 2.2 MiB
LIMITS = {
    "max_upload_mb": 4.0,
    "max_unzipped_mb": 8.0,
    "max_zip_entries": 200,
    "max_queue": 8,
    "job_timeout_s": 120.0,
    "threshold": 0.08,  # the tiny detector segments barely above 0.1: a margin, so that a finding survives retraining
    "classify_max_wait_ms": 100.0,
    "classify_max_batch": 16,
    "threads": 1,
    "upload_idle_s": 5.0,
}


@pytest.fixture(scope="session")
def trained(tiny_detector) -> tuple[Path, Path]:
    """(data folder of 3 half-size synthetic scans, detector run folder): the session's tiny detector."""
    return tiny_detector


@pytest.fixture(scope="session")
def scans(trained) -> list[Path]:
    """The .mhd headers of the training scans."""
    return sorted(trained[0].glob("subset*/*.mhd"))


def settings_for(run: Path, state: Path, **overrides) -> ServeSettings:
    return ServeSettings(run=run, state=state, **{**LIMITS, **overrides})


@pytest.fixture(scope="session")
def client(trained, tmp_path_factory):
    """A ready app over the tiny run with `LIMITS`, shared by the tests that need no settings of their own."""
    state = tmp_path_factory.mktemp("serve-state")
    with TestClient(create_app(settings_for(trained[1], state))) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def make_app(trained, tmp_path):
    """`make_app(state=None, **settings)` -> a started TestClient (closed after the test)."""
    clients = []

    def make(state: Path | None = None, **overrides) -> TestClient:
        client = TestClient(create_app(settings_for(trained[1], state or tmp_path / "state", **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
