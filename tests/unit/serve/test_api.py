"""Health checks, token, metrics, OpenAPI, the CLI's refusal to bind openly, and batched /v1/classify."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from noduleflow.detect import Predictor
from noduleflow.errors import ConfigError
from noduleflow.serve.settings import TOKEN_ENV, ServeSettings
from noduleflow.serve.worker import DetectionRunner


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_health_model_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    model = client.get("/v1/model").json()
    assert model.pop("runtime") in (
        "int8+torch",
        "onnx+torch",
        "int8+torch-bf16",
        "onnx+torch-bf16",
        "int8",
        "onnx",
        "torch",
    )
    assert model == {
        "run": "tiny",
        "patch_size": [16, 32, 32],
        "has_malignancy": True,
        "malignancy_model": "network",  # the tiny run has too few labelled nodules to fit the measured model
    }
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/scans",
        "/v1/scans/{job_id}",
        "/v1/scans/{job_id}/slices/{k}.png",
        "/v1/scans/{job_id}/mask/{k}.png",
        "/v1/classify",
        "/v1/model",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    assert "multipart/form-data" in paths["/v1/scans"]["post"]["requestBody"]["content"]


def test_token_guards_everything_but_health_and_viewer(make_app, monkeypatch):
    monkeypatch.setattr(DetectionRunner, "_loop", lambda self: None)  # no worker process: only the routes matter here
    client = make_app(token="s3cret", host="0.0.0.0")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # open, and honest: no worker here
    for path in ("/v1/scans", "/v1/model", "/metrics", "/openapi.json", "/v1/scans/0123456789abcdef0123456789abcdef"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post("/v1/scans", files={"file": ("a.mha", b"x")})
    assert response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/scans", headers={"Authorization": "Bearer s3cret"}).json() == {"jobs": []}
    assert client.get("/static/missing.js").status_code == 404 and client.get("/").status_code in (200, 404)


def test_settings_refuse_an_open_bind_without_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match="without a token"):
        ServeSettings(run=tmp_path, host="0.0.0.0")
    assert (
        ServeSettings(run=tmp_path, host="::1").token is None
        and ServeSettings(run=tmp_path, host="localhost").host == "localhost"
    )
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert ServeSettings.from_env(run=tmp_path, host="0.0.0.0").token == "from-env"
    assert ServeSettings(run=tmp_path).state == tmp_path / "serve-state"
    with pytest.raises(ConfigError, match="max_queue"):
        ServeSettings(run=tmp_path, max_queue=0)
    with pytest.raises(ConfigError, match="blob_weight must lie in 0..1"):
        ServeSettings(run=tmp_path, blob_weight=1.5)
    assert ServeSettings(run=tmp_path, blob_weight=0).predictor_options()["blob_weight"] == 0


def test_cli_refuses_to_bind_openly_without_a_token(trained):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("src"))
    done = subprocess.run(
        [sys.executable, "-m", "noduleflow", "serve", "--run", str(trained[1]), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on 0.0.0.0 without a token")


def test_concurrent_classify_requests_are_batched_and_answered_each_their_own(client, trained):
    predictor = Predictor.from_run(trained[1], runtime="torch", threads=1)
    rng = np.random.default_rng(0)
    patches = [rng.integers(-1000, 400, (2, 16, 32, 32)).astype(np.int16) for _ in range(6)]
    answers = [None] * len(patches)

    def ask(k):
        answers[k] = client.post(
            "/v1/classify", content=_npy(patches[k]), headers={"content-type": "application/octet-stream"}
        )

    before = _batches(client)
    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(patches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, response in enumerate(answers):
        assert response.status_code == 200, response.text
        nodule, malignant = predictor.classify_patches(patches[k])
        assert response.json()["nodule"] == pytest.approx(nodule.tolist(), abs=1e-5)
        assert response.json()["malignancy"] == pytest.approx(malignant.tolist(), abs=1e-5)
    calls, requests = (a - b for a, b in zip(_batches(client), before))
    assert requests == 6 and calls < 6  # at least two requests shared one model call


def _batches(client) -> tuple[float, float]:
    """(classifier calls, requests they answered) from /metrics."""
    text = client.get("/metrics").text
    count = re.search(r"^noduleflow_classify_batch_requests_count (\S+)$", text, re.MULTILINE)
    total = re.search(r"^noduleflow_classify_batch_requests_sum (\S+)$", text, re.MULTILINE)
    return (float(count.group(1)), float(total.group(1))) if count else (0.0, 0.0)


def test_classify_one_patch_and_multipart(client):
    patch = np.full((16, 32, 32), -700, np.int16)
    one = client.post("/v1/classify", content=_npy(patch), headers={"content-type": "application/octet-stream"}).json()
    form = client.post("/v1/classify", files={"file": ("p.npy", _npy(patch[None].astype(np.float32)))}).json()
    assert len(one["nodule"]) == len(form["nodule"]) == 1 and 0 <= one["nodule"][0] <= 1
    assert one["nodule"] == pytest.approx(form["nodule"], abs=1e-6)


def test_metrics_count_requests_queue_jobs_and_batches(client):
    client.get("/healthz")
    client.get("/v1/scans/0123456789abcdef0123456789abcdef")
    text = client.get("/metrics").text
    assert re.search(r'noduleflow_http_requests_total\{method="GET",route="/healthz",status="200"\} [1-9]', text)
    assert re.search(
        r'noduleflow_http_requests_total\{method="GET",route="/v1/scans/\{job_id\}",status="404"\} [1-9]', text
    )
    assert 'noduleflow_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/healthz"}' in text
    assert re.search(r"^noduleflow_queue_length \d", text, re.MULTILINE)
    for state in ("queued", "running", "done", "failed"):
        assert f'noduleflow_jobs{{state="{state}"}}' in text
    assert "noduleflow_classify_batch_size_bucket" in text
