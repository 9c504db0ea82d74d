"""The measured malignancy model in a trained run: fitted by the recipe's step, carried by the export, used by
every runtime of the Predictor (on the session's tiny detector, tests/conftest.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from noduleflow.ct import read_volume
from noduleflow.data.luna16 import load_index
from noduleflow.detect import Predictor
from noduleflow.detect.measure import (
    MEASURED_NAME,
    MeasuredMalignancy,
    crop_measured,
    measured_diameter_mm,
    nodule_measures,
)
from noduleflow.detect.pipeline import scan_sources
from noduleflow.errors import CheckpointError
from noduleflow.export import export_run
from noduleflow.export.manifest import MEASURED_KEY
from noduleflow.recipes.detector import TRAINING_JSON
from noduleflow.recipes.measured import fit_run_measured

MODEL = MeasuredMalignancy((2.0, -0.1, 0.1), (0.35, 0.2, 0.3), (1.0, 0.2, -0.9), -1.6, 133, 31, 1.1)
LOW = {"threshold": 0.02, "max_candidates": 20}  # the tiny U-Net's map peaks far below 0.5: candidates to score


@pytest.fixture(scope="module")
def measured_run(tiny_detector, tmp_path_factory):
    """A copy of the tiny detector with a measured model, exported again."""
    data, run = tiny_detector
    copy = tmp_path_factory.mktemp("measured") / "run"
    shutil.copytree(run, copy)
    (copy / "malignancy" / MEASURED_NAME).write_text(json.dumps(MODEL.to_dict()))
    export_run(copy, formats=("onnx", "int8"), data=data)
    return data, copy


def test_the_tiny_recipe_has_too_few_labelled_nodules_to_fit_and_says_so(tiny_detector):
    _, run = tiny_detector
    assert not (run / "malignancy" / MEASURED_NAME).exists()
    skipped = json.loads((run / TRAINING_JSON).read_text())["skipped"]
    assert skipped["measured"].startswith("fitting malignancy needs at least 10 labelled nodules")
    assert Predictor.from_run(run).malignancy_source == "network"


def test_the_recipe_step_fits_on_the_labelled_nodules_outside_the_test_split(tiny_detector, tmp_path, monkeypatch):
    data, _ = tiny_detector
    monkeypatch.setattr("noduleflow.detect.measure.MIN_NODULES", 4)
    index = load_index(data)
    labelled = [n for n in index.nodules if n.malignant is not None]
    assert fit_run_measured(data, tmp_path) == {
        "nodules": len(labelled),
        "malignant": sum(bool(n.malignant) for n in labelled),
    }
    written = MeasuredMalignancy.from_dict(json.loads((tmp_path / "malignancy" / MEASURED_NAME).read_text()))
    assert written.nodules == len(labelled)
    assert 0.8 < written.diameter_factor < 1.5  # the rays' lower quartile reads a little short of the annotation
    one = index.series_uids[0]
    left = [n for n in labelled if n.series_uid != one]
    assert fit_run_measured(data, tmp_path, exclude=[one])["nodules"] == len(left)


@pytest.mark.parametrize("runtime", ["auto", "torch", "onnx", "int8"])
def test_every_runtime_reports_the_measured_model_s_probability(measured_run, runtime):
    data, run = measured_run
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert MeasuredMalignancy.from_dict(manifest[MEASURED_KEY]) == MODEL
    predictor = Predictor.from_run(run, runtime=runtime, **LOW)
    assert predictor.malignancy_source == "measured" and predictor.nets.measured == MODEL
    volume = read_volume(scan_sources(data)[0])
    findings = predictor.predict(volume).findings
    assert findings
    centers = np.array([f.center_irc for f in findings])
    measures = nodule_measures(crop_measured(volume, centers))
    np.testing.assert_allclose([f.malignancy for f in findings], MODEL.probabilities(measures), atol=1e-6)
    np.testing.assert_allclose([f.diameter_mm for f in findings], 1.1 * measured_diameter_mm(measures), rtol=1e-6)
    network = Predictor.from_run(run, runtime=runtime, malignancy_model="network", **LOW)
    assert network.malignancy_source == "network"
    by_network = {f.center_irc: f.malignancy for f in network.predict(volume).findings}
    assert any(abs(by_network[f.center_irc] - f.malignancy) > 1e-3 for f in findings if f.center_irc in by_network)


def test_classify_patches_reads_the_same_patches(measured_run):
    data, run = measured_run
    predictor = Predictor.from_run(run, runtime="onnx", **LOW)
    volume = read_volume(scan_sources(data)[0])
    centers = np.array([f.center_irc for f in predictor.predict(volume).findings[:4]])
    contract = predictor.contracts["classify"]
    assert tuple(contract.patch_mm) == (24.0, 24.0, 24.0)  # the measured patch: the same cut, so the same numbers
    from noduleflow.data.patches import crop_patch

    patches = np.stack(
        [crop_patch(volume.hu, c, contract.patch_size, contract.patch_mm, volume.spacing_irc) for c in centers]
    )
    _, malignant = predictor.classify_patches(patches)
    np.testing.assert_allclose(malignant, MODEL(crop_measured(volume, centers)), atol=1e-6)


def test_a_damaged_measured_model_is_named_with_its_fix(measured_run, tmp_path):
    _, run = measured_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "malignancy" / MEASURED_NAME).write_text('{"features": ["log_diameter"]}')
    with pytest.raises(CheckpointError, match="cannot read the measured malignancy model") as err:
        Predictor.from_run(copy, runtime="torch")
    assert "Delete it to use the malignancy network" in str(err.value)
    manifest = copy / "export" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc[MEASURED_KEY]["coef"] = [1.0]
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="damaged measured malignancy model") as err:
        Predictor.from_run(copy, runtime="onnx")
    assert "noduleflow export" in str(err.value)
