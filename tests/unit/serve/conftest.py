"""Fixtures of the server tests: one tiny trained detector and its scans for the whole session, and apps over it.

Training takes about a minute, so it happens once (session scope); so does the shared app, whose detection
worker process pays torch's import once. Tests that need other settings build their own app with `make_app`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from noduleflow.recipes.detector import train_detector
from noduleflow.serve import ServeSettings, create_app
from noduleflow.synth import synthesize

TINY = {part: {"run.epochs": 1, "data.num_workers": 0} for part in ("segment", "classify", "malignancy")}
# small limits, so that the hostile tests stay small; the test scans (69 x 128 x 128 int16) are 2.2 MiB
LIMITS = {
    "max_upload_mb": 4.0,
    "max_unzipped_mb": 8.0,
    "max_zip_entries": 200,
    "max_queue": 8,
    "job_timeout_s": 120.0,
    "threshold": 0.1,
    "classify_max_wait_ms": 100.0,
    "classify_max_batch": 16,
    "threads": 1,
    "upload_idle_s": 5.0,
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder of 3 half-size synthetic scans, detector run folder trained for one short epoch per part)."""
    root = tmp_path_factory.mktemp("serve-run")
    data = root / "data"
    synthesize(data, scans=3, seed=2, size="small", scale=0.5, progress=False)
    result = train_detector(
        data, run="tiny", runs_dir=root / "runs", scale=0.02, progress=False, threads=2, overrides=TINY
    )
    return data, result.run_dir


@pytest.fixture(scope="session")
def scans(trained) -> list[Path]:
    """The .mhd headers of the training scans."""
    return sorted(trained[0].glob("subset*/*.mhd"))


def settings_for(run: Path, state: Path, **overrides) -> ServeSettings:
    return ServeSettings(run=run, state=state, **{**LIMITS, **overrides})


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < end, client.get("/readyz").json()
        time.sleep(0.1)


def wait_job(client: TestClient, job_id: str, timeout: float = 120.0, headers=None) -> dict:
    """Poll GET /v1/scans/{id} until the job is done or failed; returns its JSON."""
    end = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/scans/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < end, job
        time.sleep(0.1)


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
