"""`ScanResult.to_dict` and `.to_frame`: a scan's findings as JSON types and as a pandas table."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from detect_phantom import NODULE_IRC, chest

from noduleflow.detect import Finding, Predictor, ScanResult
from noduleflow.detect.predictor import FRAME_COLUMNS
from noduleflow.errors import NoduleflowError


def _result(malignancy: float | None = 0.25) -> ScanResult:
    """Two findings, most probable first, with numpy scalars where the pipeline may leave them."""
    findings = [
        Finding((1.5, -2.0, 30.25), (12.0, 40.5, 33.0), 0.9, malignancy, 6.2, 0.95, 0.947),
        Finding((-80.0, 10.0, -4.0), (3.25, 7.0, 2.0), 0.3, None if malignancy is None else 0.75, 3.1, 0.6, 0.5),
    ]
    mask = np.zeros((20, 48, 64), bool)
    return ScanResult("1.2.3", findings, (np.int64(20), 48, 64), np.float64(1.25), np.int64(5), ["w"], mask)


def test_to_dict_is_plain_json_and_holds_every_field_of_every_finding():
    doc = _result().to_dict()
    assert json.loads(json.dumps(doc)) == doc  # only JSON types: the round trip changes nothing
    assert doc["seriesuid"] == "1.2.3" and doc["shape"] == [20, 48, 64] and doc["seconds"] == 1.25
    assert doc["candidates"] == 5 and doc["warnings"] == ["w"] and "candidate_mask" not in doc
    assert doc["findings"][0] == {
        "coordX": 1.5,
        "coordY": -2.0,
        "coordZ": 30.25,
        "center_irc": [12.0, 40.5, 33.0],
        "probability": 0.9,
        "malignancy": 0.25,
        "diameter_mm": 6.2,
        "classifier": 0.947,
        "segmentation": 0.95,
    }
    assert [f["probability"] for f in doc["findings"]] == [0.9, 0.3]


def test_to_dict_keeps_a_missing_malignancy_as_null():
    doc = _result(malignancy=None).to_dict()
    assert [f["malignancy"] for f in doc["findings"]] == [None, None]
    assert "null" in json.dumps(doc)


def test_to_frame_has_one_row_per_finding_in_order_with_float_columns():
    frame = _result().to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS and len(frame) == 2
    assert frame["seriesuid"].tolist() == ["1.2.3", "1.2.3"]
    assert frame.loc[0, ["coordX", "coordY", "coordZ"]].tolist() == [1.5, -2.0, 30.25]
    assert frame.loc[1, ["index_i", "index_r", "index_c"]].tolist() == [3.25, 7.0, 2.0]
    assert frame["probability"].tolist() == [0.9, 0.3] and frame["malignancy"].tolist() == [0.25, 0.75]
    assert all(frame[c].dtype == np.float64 for c in FRAME_COLUMNS[1:])


def test_to_frame_without_malignancy_or_findings_keeps_its_columns_and_types():
    frame = _result(malignancy=None).to_frame()
    assert frame["malignancy"].dtype == np.float64 and frame["malignancy"].isna().all()
    empty = ScanResult("none", [], (4, 4, 4)).to_frame()
    assert tuple(empty.columns) == FRAME_COLUMNS and len(empty) == 0 and empty["probability"].dtype == np.float64


def test_to_frame_without_pandas_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(NoduleflowError, match="needs pandas.*pip install pandas"):
        _result().to_frame()


def test_a_predicted_result_round_trips_through_both(models):
    volume = chest()
    result = Predictor(models, runtime="torch", blob_weight=0).predict(volume)  # the U-Net's one finding
    doc, frame = result.to_dict(), result.to_frame()
    assert len(doc["findings"]) == len(frame) == 1 and json.loads(json.dumps(doc)) == doc
    assert np.allclose(frame.loc[0, ["index_i", "index_r", "index_c"]].tolist(), NODULE_IRC, atol=0.5)
    xyz = volume.irc_to_xyz(frame.loc[0, ["index_i", "index_r", "index_c"]].to_numpy(float))
    assert np.allclose(xyz, [doc["findings"][0][k] for k in ("coordX", "coordY", "coordZ")])
    assert math.isnan(frame.loc[0, "malignancy"]) and doc["findings"][0]["malignancy"] is None
    assert isinstance(frame, pd.DataFrame)
