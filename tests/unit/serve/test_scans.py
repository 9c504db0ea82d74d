"""POST /v1/scans in every format -> the job's findings are the Predictor's; slices, masks, list and DELETE."""

from __future__ import annotations

import numpy as np
import pytest
from scan_files import FORMATS, png, read, upload_file
from serve_waits import wait_job

from noduleflow.detect import Predictor


@pytest.fixture(scope="session")
def volume(scans, predictor):
    """The smallest scan within the U-Net's training spacing (where the tiny detector, at threshold 0.08, finds
    nodules; a scan outside it is segmented on a resampled grid, where the barely trained U-Net finds nothing)."""
    within = [volume for volume in map(read, scans) if predictor.grid(volume) is None]
    return min(within, key=lambda volume: volume.hu.size)


@pytest.fixture(scope="session")
def predictor(trained):
    return Predictor.from_run(trained[1], threshold=0.08, threads=1)  # the served threshold (conftest LIMITS)


@pytest.fixture(scope="session")
def uploaded(client, volume, predictor, tmp_path_factory):
    """{format: (the job's final JSON, the Predictor's result on the same file read locally)}, all uploaded at once."""
    ids, expected = {}, {}
    for fmt in FORMATS:
        name, data, local = upload_file(volume, fmt, tmp_path_factory.mktemp(fmt.replace(".", "-")))
        response = client.post("/v1/scans", files={"file": (name, data, "application/octet-stream")})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        ids[fmt] = response.json()["id"]
        expected[fmt] = predictor.predict(read(local))
    return {fmt: (wait_job(client, ids[fmt]), expected[fmt]) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_predictors_findings(uploaded, fmt, volume):
    job, result = uploaded[fmt]
    assert job["status"] == "done" and job["error"] is None, job
    assert job["scan"]["shape"] == list(volume.shape) and job["candidates"] == result.candidates and job["seconds"] > 0
    want = [dict(f.to_dict(), center_irc=list(f.center_irc)) for f in result.findings]
    assert len(job["findings"]) == len(want) >= 1
    for got, exp in zip(job["findings"], want):
        got, exp = dict(got), dict(exp)
        assert got.keys() == exp.keys()
        assert got.pop("center_irc") == pytest.approx(exp.pop("center_irc"), rel=1e-6)
        assert got == pytest.approx(exp, rel=1e-5, abs=1e-6)
    if fmt != "dicom-zip":  # the series uid is the file's stem; a DICOM series carries its own
        assert job["scan"]["seriesuid"] == volume.series_uid
        assert job["scan"]["spacing_xyz"] == pytest.approx(volume.spacing_xyz.tolist())


def test_slices_and_mask_pngs(client, uploaded, volume):
    job, _ = uploaded["mha"]
    _, rows, cols = volume.shape
    finding = job["findings"][0]
    k = round(finding["center_irc"][0])
    lung = png(client.get(f"/v1/scans/{job['id']}/slices/{k}.png").content)
    soft = png(client.get(f"/v1/scans/{job['id']}/slices/{k}.png?window=mediastinum").content)
    assert lung.shape == soft.shape == (rows, cols) and lung.dtype == np.uint8
    assert lung.std() > 10 and not np.array_equal(lung, soft)
    # the lung window maps -1350..150 HU linearly onto 0..255
    hu = volume.hu[k]
    expected = np.clip((hu.astype(np.float32) + 1350) * 255 / 1500, 0, 255).astype(np.uint8)
    assert np.abs(lung.astype(int) - expected).max() <= 1
    mask = png(client.get(f"/v1/scans/{job['id']}/mask/{k}.png").content)
    assert mask.shape == (rows, cols, 4)
    # no candidate mask from this Predictor yet -> transparent; with one, opaque pixels lie on the finding
    set_ = mask[..., 3] > 0
    if set_.any():
        r, c = np.argwhere(set_).mean(0)
        assert abs(r - finding["center_irc"][1]) < 10 and abs(c - finding["center_irc"][2]) < 10


def test_an_upload_outside_the_unets_spacing_is_segmented_resampled_and_shown_on_its_own_voxels(
    client, scans, predictor, tmp_path
):
    """A scan of coarser pixels than the detector's training scans: the job holds the local Predictor's findings (on
    the resampled grid), and its slices and mask overlays keep the upload's own size."""
    from noduleflow.ct.resample import resample

    coarse = min(map(read, scans), key=lambda volume: volume.hu.size)
    coarse = resample(coarse, coarse.spacing_xyz * [1.5, 1.5, 1])
    assert predictor.grid(coarse) is not None
    name, data, local = upload_file(coarse, "mha", tmp_path)
    response = client.post("/v1/scans", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 202, response.text
    job, result = wait_job(client, response.json()["id"]), predictor.predict(read(local))
    assert job["status"] == "done" and job["scan"]["shape"] == list(coarse.shape), job
    assert [f["probability"] for f in job["findings"]] == pytest.approx([f.probability for f in result.findings])
    k = coarse.shape[0] // 2
    assert png(client.get(f"/v1/scans/{job['id']}/mask/{k}.png").content).shape == (*coarse.shape[1:], 4)


@pytest.mark.parametrize(
    "path, status",
    [("slices/-1.png", 404), ("slices/9999.png", 404), ("mask/9999.png", 404), ("slices/x.png", 422)],
)
def test_slice_out_of_range_is_404(client, uploaded, path, status):
    job, _ = uploaded["mha"]
    response = client.get(f"/v1/scans/{job['id']}/{path}")
    assert response.status_code == status and response.json()["detail"]  # 422: not a slice number at all


def test_unknown_job_and_window(client, uploaded):
    job, _ = uploaded["mha"]
    assert client.get("/v1/scans/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/scans/..%2F..%2Fetc").status_code == 404
    assert client.get(f"/v1/scans/{job['id']}/slices/0.png?window=bone").status_code == 422


def test_list_is_newest_first(client, uploaded):
    jobs = client.get("/v1/scans").json()["jobs"]
    ours = [j["id"] for j in jobs if j["id"] in {job["id"] for job, _ in uploaded.values()}]
    assert ours == [uploaded[fmt][0]["id"] for fmt in reversed(FORMATS)]
    assert all(set(j) == {"id", "status", "filename", "created"} for j in jobs)
    created = [j["created"] for j in jobs]
    assert created == sorted(created, reverse=True)


def test_delete_removes_the_jobs_files(client, volume, tmp_path):
    name, data, _ = upload_file(volume, "mha", tmp_path)
    job_id = client.post("/v1/scans", files={"file": (name, data, "application/octet-stream")}).json()["id"]
    server = client.app.state.server
    folder = server.store.root / job_id
    assert wait_job(client, job_id)["status"] == "done" and (folder / "scan.npy").is_file()
    assert client.delete(f"/v1/scans/{job_id}").status_code == 204
    assert not folder.exists()
    assert client.get(f"/v1/scans/{job_id}").status_code == 404
    assert client.delete(f"/v1/scans/{job_id}").status_code == 404
