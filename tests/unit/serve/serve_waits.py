"""Polling and request helpers of the server tests, in a module of their own: `from conftest import ...` resolves to
whichever folder's conftest.py was imported first, so tests import these by this unique name."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


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


def multipart_upload_scope() -> dict:
    """The ASGI scope of a multipart POST /v1/scans, for tests that drive the app with their own receive()."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/scans",
        "raw_path": b"/v1/scans",
        "query_string": b"",
        "root_path": "",
        "state": {},
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
    }
