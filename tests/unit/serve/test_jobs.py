"""The job store and runner: restarts lose nothing, timeouts and crashes fail one job, the queue has a limit."""

from __future__ import annotations

import json
import shutil
import threading
import time

import fake_workers
import pytest
from scan_files import read, upload_file
from serve_waits import multipart_upload_scope, wait_job, wait_ready

from noduleflow.serve.jobs import JobStore
from noduleflow.serve.settings import ServeSettings
from noduleflow.serve.worker import DetectionRunner


def _runner(tmp_path, target, **overrides):
    settings = ServeSettings(run=tmp_path, state=tmp_path / "state", **{"job_timeout_s": 60.0, **overrides})
    store = JobStore(settings.state)
    finished = []
    runner = DetectionRunner(settings, store, on_finish=finished.append, target=target)
    return store, runner, finished


def _job(store, name):
    job_id, folder = store.new_folder()
    (folder / "upload" / name).write_bytes(b"x")
    store.create(job_id, name, folder / "upload" / name)
    return job_id


def _wait(store, job_id, timeout=60.0):
    end = time.monotonic() + timeout
    while (job := store.get(job_id))["status"] not in ("done", "failed"):
        assert time.monotonic() < end, job
        time.sleep(0.05)
    return job


def test_timeout_and_crash_fail_one_job_each_and_the_worker_is_restarted(tmp_path):
    store, runner, finished = _runner(tmp_path, fake_workers.worker, job_timeout_s=1.0)
    ids = [_job(store, name) for name in ("sleep.mha", "crash.mha", "bad.mha", "fine.mha")]
    runner.start(ids)
    try:
        slow, crash, bad, fine = (_wait(store, i) for i in ids)
    finally:
        runner.stop()
    assert slow["status"] == "failed" and "longer than the server's limit of 1 s" in slow["error"]
    assert slow["finished"] - slow["started"] == pytest.approx(1.0, abs=0.6)
    assert crash["status"] == "failed" and "crashed" in crash["error"] and "exit code 3" in crash["error"]
    assert bad["status"] == "failed" and bad["error"] == "bad.mha: is not a scan. Upload another."
    assert fine["status"] == "done" and fine["error"] is None and fine["scan"] == {"seriesuid": "upload/fine.mha"}
    assert len(runner.startup_seconds) == 3  # at start, after the timeout, after the crash
    assert [j["id"] for j in finished] == ids and all(j["attempts"] == 1 for j in (slow, crash, bad, fine))


def test_cancel_kills_the_running_job_and_drops_queued_ones(tmp_path):
    store, runner, finished = _runner(tmp_path, fake_workers.worker)
    running, queued, after = (_job(store, n) for n in ("sleep.mha", "a.mha", "b.mha"))
    runner.start([running, queued, after])
    try:
        while runner.current != running:
            time.sleep(0.02)
        runner.cancel(queued)
        assert runner.queued() == 1
        start = time.monotonic()
        runner.cancel(running)
        assert time.monotonic() - start < 5
        assert _wait(store, after)["status"] == "done"
    finally:
        runner.stop()
    assert (
        store.get(running)["status"] == "running" and store.get(queued)["status"] == "queued"
    )  # the DELETE removes them
    assert [j["id"] for j in finished] == [after]


def test_a_worker_that_cannot_start_fails_jobs_with_its_reason(tmp_path):
    store, runner, _ = _runner(tmp_path, fake_workers.broken)
    job_id = _job(store, "a.mha")
    runner.start([job_id])
    try:
        job = _wait(store, job_id)
    finally:
        runner.stop()
    assert job["status"] == "failed" and "it is broken" in job["error"] and runner.worker_error


@pytest.fixture
def idle_runner(monkeypatch):
    """Apps built while this is active accept jobs but never run them (no worker process: fast)."""
    monkeypatch.setattr(DetectionRunner, "_loop", lambda self: None)
    return monkeypatch


def test_full_queue_is_429(make_app, idle_runner, tmp_path):
    client = make_app(max_queue=2)
    volume_bytes = b"ObjectType = Image\n"
    codes = [client.post("/v1/scans", files={"file": (f"{k}.mha", volume_bytes)}).status_code for k in range(3)]
    assert codes == [202, 202, 429]
    assert "queue is full" in client.post("/v1/scans", files={"file": ("x.mha", volume_bytes)}).json()["detail"]
    assert "noduleflow_queue_length 2.0" in client.get("/metrics").text
    assert len(list(client.app.state.server.store.root.iterdir())) == 2


def test_a_restarted_server_keeps_finished_jobs_and_reruns_unfinished_ones(
    client, make_app, idle_runner, scans, tmp_path, trained
):
    # a finished job of the shared server, copied into a new state folder
    volume = read(scans[0])
    name, data, _ = upload_file(volume, "mha", tmp_path / "files")
    done_id = client.post("/v1/scans", files={"file": (name, data)}).json()["id"]
    done = wait_job(client, done_id)
    state = tmp_path / "state"
    shutil.copytree(client.app.state.server.store.root / done_id, state / "jobs" / done_id)
    # a server that accepts two uploads and stops before running them; one of them had started ("running")
    stopped = make_app(state=state)
    queued_id, running_id = (stopped.post("/v1/scans", files={"file": (name, data)}).json()["id"] for _ in range(2))
    stopped.__exit__(None, None, None)
    job_json = state / "jobs" / running_id / "job.json"
    job_json.write_text(json.dumps(dict(json.loads(job_json.read_text()), status="running", started=time.time())))
    (state / "jobs" / ("f" * 32) / "upload").mkdir(parents=True)  # an upload cut off before its 202
    idle_runner.undo()

    restarted = make_app(state=state)
    wait_ready(restarted)
    assert restarted.get(f"/v1/scans/{done_id}").json() == done
    assert restarted.get(f"/v1/scans/{done_id}/slices/0.png").status_code == 200
    for job_id in (queued_id, running_id):
        job = wait_job(restarted, job_id)
        assert job["status"] == "done" and job["findings"] == done["findings"]
    assert json.loads((state / "jobs" / running_id / "job.json").read_text())["attempts"] == 1
    assert not (state / "jobs" / ("f" * 32)).exists()


def test_the_same_scan_uploaded_concurrently_gives_independent_equal_jobs(client, scans, tmp_path):
    name, data, _ = upload_file(read(scans[0]), "nii.gz", tmp_path)
    responses = []

    def upload():
        responses.append(client.post("/v1/scans", files={"file": (name, data)}))

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in responses] == [202] * 3
    jobs = [wait_job(client, r.json()["id"]) for r in responses]
    assert len({j["id"] for j in jobs}) == 3 and all(j["status"] == "done" for j in jobs)
    assert jobs[0]["findings"] == jobs[1]["findings"] == jobs[2]["findings"]
    for job in jobs:
        assert client.delete(f"/v1/scans/{job['id']}").status_code == 204


def test_a_client_that_leaves_mid_job_does_not_stop_it(client, scans, tmp_path):
    """The job belongs to the server, not to the connection: a client that uploads and goes away finds it done later."""
    name, data, _ = upload_file(read(scans[1]), "mha", tmp_path)
    with client.stream("POST", "/v1/scans", files={"file": (name, data)}) as response:
        job_id = json.loads(response.read())["id"]
    # no one polls; a different request later finds it done
    assert wait_job(client, job_id)["status"] == "done"


def test_a_slow_upload_is_cut_off_with_408(make_app, idle_runner):
    """A client that stops sending mid-body: 408 after `upload_idle_s`, its partial upload removed."""
    import asyncio

    client = make_app(upload_idle_s=0.3)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mha"\r\n\r\n' + b"\x00" * 100
    sent, calls = [], []

    async def receive():
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": head, "more_body": True}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = multipart_upload_scope()
    start = time.monotonic()
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 408 and time.monotonic() - start < 3
    assert not any(client.app.state.server.store.root.iterdir())
