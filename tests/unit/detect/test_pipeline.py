"""`detect` over folders: results written as scans finish, bad scans skipped and named, reruns that skip
finished scans, no stale results, names from headers that stay inside OUT, output folders that fail early.

The predictor is a stand-in (`FakePredictor`): these tests are about files, not models.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noduleflow import files as files_module
from noduleflow.ct import CtVolume, write_volume
from noduleflow.detect import pipeline
from noduleflow.detect.pipeline import DETECTIONS_JSON, SUBMISSION_CSV, detect
from noduleflow.detect.predictor import Finding, ScanResult
from noduleflow.errors import OutputError, ScanError

UIDS = ["1.2.826.0.1.3680043.2.1", "1.2.826.0.1.3680043.2.2", "1.2.826.0.1.3680043.2.3"]


class FakePredictor:
    """One finding per scan at its centre voxel, probability from the scan's mean HU; records the scans it saw."""

    calls: ClassVar[list[str]] = []
    uid: str | None = None  # when set, every result claims this series uid (a hostile header)
    stop_after: int | None = None  # raise KeyboardInterrupt on this call (a killed job)

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    @classmethod
    def from_run(cls, run_dir, **kwargs):
        return cls(**kwargs)

    def predict(self, volume: CtVolume) -> ScanResult:
        FakePredictor.calls.append(volume.series_uid)
        if FakePredictor.stop_after is not None and len(FakePredictor.calls) > FakePredictor.stop_after:
            raise KeyboardInterrupt
        irc = tuple(float(s // 2) for s in volume.shape)
        xyz = tuple(float(v) for v in volume.irc_to_xyz(np.array(irc)))
        p = float(np.clip((volume.hu.mean() + 1000) / 2000, 0, 1))
        uid = volume.series_uid if FakePredictor.uid is None else FakePredictor.uid
        return ScanResult(uid, [Finding(xyz, irc, p, 0.25, 6.0, 0.9, p)], volume.shape, seconds=0.01, candidates=3)


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    FakePredictor.calls, FakePredictor.uid, FakePredictor.stop_after = [], None, None
    monkeypatch.setattr(pipeline, "Predictor", FakePredictor)
    return FakePredictor


@pytest.fixture
def run(tmp_path) -> Path:
    (tmp_path / "run" / "segment").mkdir(parents=True)
    (tmp_path / "run" / "segment" / "best.pt").write_bytes(b"weights")
    return tmp_path / "run"


def _scan(path: Path, uid: str, hu: int = -500) -> Path:
    volume = CtVolume(np.full((4, 8, 8), hu, np.int16), [-10.0, 5.0, 20.0], [0.8, 0.8, 2.0], np.eye(3), series_uid=uid)
    return write_volume(volume, path)


@pytest.fixture
def data(tmp_path) -> Path:
    """A LUNA16 folder with three tiny scans."""
    for k, uid in enumerate(UIDS):
        _scan(tmp_path / "data" / "subset0" / f"{uid}.mha", uid, hu=-900 + 300 * k)
    return tmp_path / "data"


def _rows(out: Path) -> list[dict]:
    with open(out / SUBMISSION_CSV, newline="") as fh:
        return list(csv.DictReader(fh))


def _doc(out: Path) -> dict:
    return json.loads((out / DETECTIONS_JSON).read_text())


def test_every_scan_writes_both_files_and_its_png(data, run, tmp_path):
    summary = detect(data, run, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert [r["seriesuid"] for r in _rows(out)] == UIDS
    assert [float(r["probability"]) for r in _rows(out)] == pytest.approx([0.05, 0.2, 0.35], abs=1e-6)
    doc = _doc(out)
    assert doc["complete"] is True and doc["failed"] == {} and [s["seriesuid"] for s in doc["scans"]] == UIDS
    assert sorted(p.name for p in (out / "png").iterdir()) == [f"{u}.png" for u in UIDS]
    assert len(summary.results) == 3 and summary.reused == 0


def test_a_killed_job_keeps_finished_scans_and_a_rerun_does_only_the_rest(data, run, tmp_path, fake):
    out = tmp_path / "out"
    fake.stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        detect(data, run, out, progress=False)
    assert [r["seriesuid"] for r in _rows(out)] == UIDS[:2]  # written as each scan finished
    assert _doc(out)["complete"] is False and [s["seriesuid"] for s in _doc(out)["scans"]] == UIDS[:2]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    fake.calls, fake.stop_after = [], None
    summary = detect(data, run, out, progress=False)
    assert fake.calls == [UIDS[2]] and summary.reused == 2 and "2 scan(s) kept" in summary.describe()
    assert [r["seriesuid"] for r in _rows(out)] == UIDS and _doc(out)["complete"] is True


def test_a_bad_scan_is_named_the_others_are_written_and_a_rerun_retries_only_it(data, run, tmp_path, fake, capsys):
    bad = data / "subset0" / "1.2.826.0.1.3680043.2.25.mha"
    bad.write_text("garbage")
    out = tmp_path / "out"
    with pytest.raises(ScanError) as err:
        detect(data, run, out, progress=False)
    assert "1 of 4 scan(s) failed" in err.value.message and bad.name in err.value.message
    printed = [line for line in capsys.readouterr().out.splitlines() if "warning:" in line or "error:" in line]
    assert len(printed) == 1 and printed[0].startswith("warning: skipped") and str(bad) in printed[0]
    assert [r["seriesuid"] for r in _rows(out)] == UIDS
    doc = _doc(out)
    assert doc["complete"] is False and list(doc["failed"]) == [str(bad)]

    bad.unlink()
    _scan(bad, "1.2.826.0.1.3680043.2.25")
    fake.calls = []
    detect(data, run, out, progress=False)
    assert fake.calls == ["1.2.826.0.1.3680043.2.25"] and _doc(out)["complete"] is True and _doc(out)["failed"] == {}
    assert len(_rows(out)) == 4


def test_other_settings_or_restart_start_afresh_and_remove_the_old_results(data, run, tmp_path, fake):
    out = tmp_path / "out"
    detect(data, run, out, progress=False, threshold=0.5)
    (out / "png" / "old-scan.png").write_bytes(b"stale")
    fake.calls = []
    detect(data / "subset0" / f"{UIDS[0]}.mha", run, out, progress=False, threshold=0.5)  # same settings, one scan
    assert fake.calls == [] and [r["seriesuid"] for r in _rows(out)] == UIDS[:1]
    assert sorted(p.name for p in (out / "png").iterdir()) == [f"{UIDS[0]}.png"]  # the other scans' PNGs are gone

    detect(data, run, out, progress=False, threshold=0.4)  # other settings: everything redone
    assert fake.calls == UIDS and _doc(out)["settings"]["predictor"]["threshold"] == 0.4
    fake.calls = []
    detect(data, run, out, progress=False, threshold=0.4, threads=1)  # threads change speed, not results
    assert fake.calls == []
    detect(data, run, out, progress=False, threshold=0.4, restart=True)
    assert fake.calls == UIDS
    fake.calls = []
    (run / "segment" / "best.pt").write_bytes(b"retrained weights")  # the same run folder, trained again
    detect(data, run, out, progress=False, threshold=0.4)
    assert fake.calls == UIDS


def test_the_settings_record_the_predictor_s_defaults_too(run, monkeypatch):
    """A release that changes a default (the threshold did) redoes the scans instead of keeping stale results."""
    from noduleflow.detect.predictor import DEFAULT_THRESHOLD, Predictor

    monkeypatch.setattr(pipeline, "Predictor", Predictor)  # the real one's defaults, not the stand-in's
    predictor = pipeline._settings(run, {"max_candidates": 50, "threads": 2})["predictor"]
    assert predictor["max_candidates"] == 50 and predictor["threshold"] == DEFAULT_THRESHOLD
    assert predictor["malignancy_model"] == "measured" and "threads" not in predictor  # threads change only speed


def test_a_fresh_job_replaces_the_old_files_before_its_first_scan(data, run, tmp_path, fake):
    out = tmp_path / "out"
    detect(data, run, out, progress=False)
    fake.stop_after = 0  # the new job is killed in its first scan
    with pytest.raises(KeyboardInterrupt):
        detect(data, run, out, progress=False, restart=True)
    assert _rows(out) == [] and _doc(out)["scans"] == [] and _doc(out)["complete"] is False
    assert list((out / "png").iterdir()) == []


@pytest.mark.parametrize("text", ["{not json", '{"format": 2, "settings": {}, "scans": [{"seriesuid": 1}]}', "[]"])
def test_a_broken_detections_json_in_out_only_means_starting_afresh(data, run, tmp_path, fake, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / DETECTIONS_JSON).write_text(text)
    detect(data, run, out, progress=False)
    assert fake.calls == UIDS and _doc(out)["complete"] is True


def test_a_listed_file_outside_out_is_never_deleted(data, run, tmp_path, fake):
    out = tmp_path / "out"
    detect(data, run, out, progress=False)
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    doc = _doc(out)
    doc["scans"][0]["files"] = ["../keep.txt", str(victim)]
    (out / DETECTIONS_JSON).write_text(json.dumps(doc))
    detect(data, run, out, progress=False, restart=True)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("uid", ["../../../x", "/abs/x", "..", "a/../../b", "", ".hidden", "x" * 300, "[/x] [bold]"])
def test_a_hostile_series_uid_names_a_png_inside_out(data, run, tmp_path, fake, uid):
    fake.uid = uid
    out = tmp_path / "deep" / "out"
    detect(data / "subset0" / f"{UIDS[0]}.mha", run, out, progress=False)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.parts and "run" not in p.parts]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
    assert len(list((out / "png").glob("*.png"))) == 1
    assert [r["seriesuid"] for r in _rows(out)] == [uid or UIDS[0]]  # the uid itself is data, kept as it is


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    uid=st.text(max_size=200)
    | st.lists(st.sampled_from(["[", "]", "/", "..", "\\", "x", "\x00"]), max_size=12).map("".join)
)
def test_any_series_uid_keeps_every_output_inside_out(data, run, fake, monkeypatch, uid):
    fake.uid = uid
    # the names are the point here, not the drawing (the parametrized test above draws real PNGs)
    monkeypatch.setattr(
        pipeline, "write_scan_png", lambda volume, result, path: files_module.atomic_write(path, b"png")
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a" / "b" / "out"
        detect(data / "subset0" / f"{UIDS[0]}.mha", run, out, progress=False)
        written = [p for p in Path(tmp).rglob("*") if p.is_file()]
        assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written)
        assert json.loads((out / DETECTIONS_JSON).read_text())["scans"][0]["seriesuid"] == (uid or UIDS[0])


def test_out_that_is_a_file_fails_before_any_scan(data, run, tmp_path, fake):
    out = tmp_path / "out.txt"
    out.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        detect(data, run, out, progress=False)
    assert fake.calls == [] and out.read_text() == "x"


def test_out_inside_a_file_fails_before_any_scan(data, run, tmp_path, fake):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        detect(data, run, tmp_path / "file" / "out", progress=False)
    assert fake.calls == []


def _deny(monkeypatch, code: int):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), kwargs.get("dir"))

    monkeypatch.setattr(files_module.tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_an_unwritable_out_fails_before_any_scan(data, run, tmp_path, fake, monkeypatch, code, words):
    _deny(monkeypatch, code)
    with pytest.raises(OutputError, match=words) as err:
        detect(data, run, tmp_path / "out", progress=False)
    assert str(tmp_path / "out") in err.value.message and fake.calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_fails_before_any_scan(data, run, tmp_path, fake):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            detect(data, run, out, progress=False)
    finally:
        out.chmod(0o755)
    assert fake.calls == []


def test_a_disk_that_fills_keeps_the_finished_scans_files_whole(data, run, tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fill(fd):
        calls.append(fd)
        if len(calls) > 6:  # begin (2 files), scan 1 (png + 2 files), then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", fill)
    with pytest.raises(OutputError, match="no space left") as err:
        detect(data, run, out, progress=False)
    assert str(out) in err.value.message
    assert [r["seriesuid"] for r in _rows(out)] == UIDS[:1] and [s["seriesuid"] for s in _doc(out)["scans"]] == UIDS[:1]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_cli_a_bad_scan_exits_2_with_one_error_line_after_writing_the_others(data, run, tmp_path, run_cli):
    (data / "subset0" / "broken.mhd").write_text("ObjectType = Image\n")
    code, out, err = run_cli("detect", data, "--run", run, "-o", tmp_path / "out")
    last = err.strip().splitlines()[-1]  # before it: the log's warnings (the third phantom has no air: not CT-like)
    assert code == 2 and (out + err).count("error:") == 1 and last.startswith("error:") and "Traceback" not in out + err
    assert "broken.mhd" in err and "1 of 4 scan(s) failed" in err
    assert [r["seriesuid"] for r in _rows(tmp_path / "out")] == UIDS


def test_cli_one_bad_scan_is_its_own_error_line_and_no_old_result_is_left(data, run, tmp_path, run_cli):
    out = tmp_path / "out"
    detect(data, run, out, progress=False)
    bad = tmp_path / "scan.mha"
    bad.write_text("garbage")
    code, stdout, err = run_cli("detect", bad, "--run", run, "-o", out)
    assert (
        code == 2 and (stdout + err).count("error:") == 1 and err.startswith(f"error: {bad}: ") and err.count("\n") == 1
    )
    assert _rows(out) == [] and _doc(out)["failed"] == {str(bad): err[len("error: ") :].strip()}
    assert list((out / "png").iterdir()) == []


@pytest.mark.parametrize(
    "code_, words",
    [
        (errno.EACCES, "permission denied"),
        (errno.ENOSPC, "no space left"),
        (errno.EROFS, "read-only"),
        (errno.ENOTDIR, "not a folder"),
    ],
)
def test_cli_an_unwritable_out_is_one_error_line(data, run, tmp_path, monkeypatch, code_, words, run_cli):
    _deny(monkeypatch, code_)
    code, _, err = run_cli("detect", data, "--run", run, "-o", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    assert str(tmp_path / "out") in lines[0]


def test_cli_an_os_error_the_library_did_not_name_is_still_one_line(data, run, tmp_path, monkeypatch, run_cli):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(pipeline, "detect", full)
    monkeypatch.setattr("noduleflow.detect.detect", full)
    code, _, err = run_cli("detect", data, "--run", run, "-o", tmp_path / "out")
    assert code == 2 and err.strip().count("\n") == 0 and "no space left" in err and str(tmp_path / "x") in err


def test_cli_restart_redoes_every_scan(data, run, tmp_path, fake, run_cli):
    assert run_cli("detect", data, "--run", run, "-o", tmp_path / "out")[0] in (0, None)
    fake.calls = []
    assert run_cli("detect", data, "--run", run, "-o", tmp_path / "out")[0] in (0, None)
    assert fake.calls == []
    assert run_cli("detect", data, "--run", run, "-o", tmp_path / "out", "--restart")[0] in (0, None)
    assert fake.calls == UIDS


def _dicom_series(folder: Path, series_uid: str) -> Path:
    """A 4-slice 8 x 8 CT series whose SeriesInstanceUID is `series_uid`, whatever it holds."""
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    for k in range(4):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID = "CT", "phantom", "1.2.3"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns that this is no valid UID: the point of the test
            ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber, ds.Rows, ds.Columns = k + 1, 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept = [0.7, 0.7], 2.5, 1, 0
        ds.PixelData = np.full((8, 8), -500, "<i2").tobytes()
        ds.save_as(folder / f"IM{k}", enforce_file_format=True)
    return folder


@pytest.mark.parametrize("uid", ["../../../x", "/abs/x"])
def test_a_dicom_series_uid_that_is_a_path_writes_inside_out(run, tmp_path, uid, run_cli):
    series = _dicom_series(tmp_path / "series", uid)
    out = tmp_path / "a" / "b" / "out"
    code, _, err = run_cli("detect", series, "--run", run, "-o", out)
    assert code in (0, None), err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "series" not in p.parts and "run" not in p.parts]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), written
    assert not (tmp_path / "x").exists() and not Path("/abs/x").exists()
    assert [r["seriesuid"] for r in _rows(out)] == [uid]


def test_a_scan_file_name_that_looks_like_markup_is_shown_as_text(run, tmp_path, fake):
    scan = _scan(tmp_path / "data" / "subset0" / "[red]x[bold].mha", "[red]x[bold]")
    detect(scan.parent.parent, run, tmp_path / "out", progress=True)
    assert [r["seriesuid"] for r in _rows(tmp_path / "out")] == ["[red]x[bold]"]


def test_a_failure_of_the_job_itself_stops_it_at_once(data, run, tmp_path, fake, monkeypatch):
    from noduleflow.errors import CheckpointError

    def broken(self, volume):
        FakePredictor.calls.append(volume.series_uid)
        raise CheckpointError("segment/best.onnx cannot be read", path=run, fix="Retrain.")

    monkeypatch.setattr(FakePredictor, "predict", broken)
    with pytest.raises(CheckpointError):
        detect(data, run, tmp_path / "out", progress=False)
    assert fake.calls == UIDS[:1]


def test_write_results_writes_one_finished_job(tmp_path):
    from noduleflow.detect import write_results

    finding = Finding((1.0, 2.0, 3.0), (0.0, 1.0, 2.0), 0.75, None, 5.0, 0.9, 0.8)
    _, json_path = write_results(
        [ScanResult("../a", [finding], (1, 2, 3)), ScanResult("b", [], (1, 2, 3))], tmp_path / "o"
    )
    assert _rows(tmp_path / "o") == [
        {"seriesuid": "../a", "coordX": "1.000", "coordY": "2.000", "coordZ": "3.000", "probability": "0.750000"}
    ]
    doc = json.loads(json_path.read_text())
    assert doc["complete"] is True and [s["seriesuid"] for s in doc["scans"]] == ["../a", "b"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["detections.json", "submission.csv"]
