"""detections.json: what `detect` writes is what `evaluate` and a resumed job read, and a broken file is one error."""

import json

import pytest

from noduleflow.detect import detections_file
from noduleflow.errors import CsvError, OutputError
from noduleflow.evaluate import read_detections

FINDING = {
    "coordX": -56.25,
    "coordY": 67.5,
    "coordZ": -101.0,
    "probability": 0.875,
    "malignancy": None,
    "diameter_mm": 6.5,
    "classifier": 0.9,
    "segmentation": 0.97,
}


def _doc(findings=(FINDING,), complete=True) -> dict:
    entry = detections_file.scan_entry(
        "1.2.3",
        "/abs/1.2.3.mhd",
        ["png/1.2.3.png"],
        candidates=4,
        seconds=1.23456,
        warnings=[],
        findings=list(findings),
    )
    return detections_file.document({"run": "/r", "models": {}, "predictor": {}}, complete, {}, [entry])


def test_what_detect_writes_reads_back_whole_and_scores_as_marks(tmp_path):
    path = tmp_path / detections_file.NAME
    detections_file.write(path, _doc())
    doc = detections_file.read(path, own=True)
    assert doc == _doc() and doc["format"] == detections_file.FORMAT == 2
    assert doc["scans"][0]["seconds"] == 1.235  # rounded to milliseconds by scan_entry
    marks = read_detections(path)
    assert [(m.series_uid, m.center_xyz, m.probability, m.malignancy) for m in marks] == [
        ("1.2.3", (-56.25, 67.5, -101.0), 0.875, None)
    ]


@pytest.mark.parametrize("cut", [1, 40, 200, -3])
def test_a_truncated_file_is_one_error_naming_it(tmp_path, cut):
    path = tmp_path / "d.json"
    text = json.dumps(_doc(), indent=1)
    path.write_text(text[:cut])
    with pytest.raises(CsvError, match="is not valid JSON") as err:
        detections_file.read(path)
    assert err.value.path == str(path)


def test_a_hand_written_file_is_enough_for_evaluate_but_not_for_resuming_a_job(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"scans": [{"seriesuid": "9", "findings": [FINDING]}]}))
    assert len(detections_file.read(path)["scans"]) == 1
    with pytest.raises(CsvError, match="is not format 2"):
        detections_file.read(path, own=True)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"source": 7}, '"source" string'),
        ({"files": "png/x.png"}, '"files" list'),
        ({"files": [None]}, "not a string"),
        ({"seriesuid": " "}, '"seriesuid" string'),
    ],
)
def test_a_resumed_job_refuses_a_scan_entry_it_could_not_use(tmp_path, change, words):
    doc = _doc()
    doc["scans"][0].update(change)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CsvError, match=words):
        detections_file.read(path, own=True)


def test_a_failed_write_is_an_output_error_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "d.json"
    detections_file.write(path, _doc(complete=False))
    with pytest.raises(OutputError):
        detections_file.write(tmp_path / "missing" / "d.json", _doc())
    with pytest.raises(TypeError):  # not JSON-serialisable: the atomic write keeps the previous file
        detections_file.write(path, _doc(findings=[dict(FINDING, probability=object())]))
    assert detections_file.read(path)["complete"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]
