"""`noduleflow train detector` (tiny) -> `noduleflow detect` -> `noduleflow evaluate`, on 3 small synthetic scans."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from noduleflow.cli import app
from noduleflow.ct import read_volume, write_volume
from noduleflow.errors import CheckpointError, ScanError
from noduleflow.recipes.detector import MINED_CSV, TRAINING_JSON

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_detector):
    """The session's tiny detector (tests/conftest.py): 3 half-size scans, one short epoch per part."""
    return tiny_detector


def test_recipe_writes_every_part_and_its_budget(trained):
    _, run_dir = trained
    for part in ("segment", "classify", "malignancy"):
        assert (run_dir / part / "best.pt").is_file() and (run_dir / part / "config.yaml").is_file()
    budget = json.loads((run_dir / TRAINING_JSON).read_text())["seconds"]
    assert set(budget) == {"segment", "mine", "classify", "malignancy", "measured", "export"} and all(
        s > 0 for s in budget.values()
    )
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())  # what detect runs by default
    assert {(m["part"], m["format"]) for m in manifest["models"]} == {
        ("segment", "onnx"),
        ("segment", "int8"),
        ("classify", "onnx"),
        ("malignancy", "onnx"),
        ("joint", "onnx"),  # malignancy is fine-tuned from the classifier: one pass over the layers they share
    }
    int8 = run_dir / "export" / "segment.int8.onnx"
    assert int8.stat().st_mtime <= (run_dir / MINED_CSV).stat().st_mtime  # made before mining, which runs it too
    classify = (run_dir / "classify" / "config.yaml").read_text()
    assert str(run_dir / MINED_CSV) in classify and (run_dir / MINED_CSV).read_text().startswith(
        "seriesuid,coordX,coordY,coordZ,class\n"
    )


def test_the_unet_records_its_training_scans_spacing_and_the_export_carries_it(trained):
    """The Predictor resamples a scan outside this range (`detect.grid`): it must be the training split's own."""
    import numpy as np

    from noduleflow.config import load_config
    from noduleflow.data import load_index
    from noduleflow.detect import Predictor
    from noduleflow.models.weights import read_checkpoint

    data, run_dir = trained
    recorded = np.array(read_checkpoint(run_dir / "segment" / "best.pt")["trained_on"]["spacing_irc_mm"])  # (3, 3)
    cfg = load_config(run_dir / "segment" / "config.yaml")
    split = load_index(data).split(
        val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed
    )
    scans = {v.series_uid: v for v in map(read_volume, sorted(data.glob("subset*/*.mhd")))}
    spacing = np.array([scans[uid].spacing_irc for uid in split.train])  # (N, 3), I R C
    widen = np.array([0, cfg.segment.augment.scale, cfg.segment.augment.scale])
    np.testing.assert_allclose(recorded[:, 0], spacing.min(0) * (1 - widen))
    np.testing.assert_allclose(recorded[:, 1], np.median(spacing, 0))
    np.testing.assert_allclose(recorded[:, 2], spacing.max(0) * (1 + widen))
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    segment = next(m for m in manifest["models"] if m["part"] == "segment")
    np.testing.assert_allclose(segment["input"]["spacing_mm"], recorded)  # what the exported runtimes resample by
    train_scan = scans[split.train[0]]
    assert Predictor.from_run(run_dir, runtime="int8").grid(train_scan) is None  # a training scan: as it is


def test_detect_folder_then_evaluate_both_outputs(trained, tmp_path):
    data, run_dir = trained
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(data), "--run", str(run_dir), "-o", str(out), "--max-candidates", "20"])
    assert result.exit_code == 0, result.output
    scans = sorted(p.stem for p in data.glob("subset*/*.mhd"))
    assert sorted(p.stem for p in (out / "png").glob("*.png")) == scans
    with open(out / "submission.csv") as fh:
        rows = list(csv.DictReader(fh))
    doc = json.loads((out / "detections.json").read_text())
    assert sorted(s["seriesuid"] for s in doc["scans"]) == scans
    findings = [(s["seriesuid"], f) for s in doc["scans"] for f in s["findings"]]
    # submission.csv is detections.json's findings, row for row, rounded as the CSV writes them
    assert [tuple(r.values()) for r in rows] == [
        (uid, *(f"{f[k]:.3f}" for k in ("coordX", "coordY", "coordZ")), f"{f['probability']:.6f}")
        for uid, f in findings
    ]
    for scan in doc["scans"]:  # most probable first; the score is the two models' product; sizes are sizes
        probs = [f["probability"] for f in scan["findings"]]
        assert probs == sorted(probs, reverse=True)
        for f in scan["findings"]:
            assert f["probability"] == pytest.approx(f["classifier"] * f["segmentation"], rel=1e-6)
            assert 0 <= f["malignancy"] <= 1 and f["diameter_mm"] > 0
    reports = {}
    for name in ("submission.csv", "detections.json"):
        scored = runner.invoke(
            app, ["evaluate", str(data), str(out / name), "--bootstrap", "0", "-o", str(tmp_path / name)]
        )
        assert scored.exit_code == 0, scored.output
        reports[name] = json.loads((tmp_path / name / "froc.json").read_text())
    # both files score the same marks: the same hits, false positives and CPM (the CSV's rounding aside)
    csv_report, json_report = reports["submission.csv"], reports["detections.json"]
    assert (csv_report["hits"], csv_report["false_positives"]) == (json_report["hits"], json_report["false_positives"])
    assert csv_report["cpm"] == pytest.approx(json_report["cpm"], abs=1e-6)
    assert csv_report["scans"] == len(scans) and csv_report["nodules"] == len(
        (data / "annotations.csv").read_text().splitlines()[1:]
    )


def test_detect_one_nifti_scan(trained, tmp_path):
    data, run_dir = trained
    volume = read_volume(next(data.glob("subset*/*.mhd")))
    scan = write_volume(volume, tmp_path / "chest.nii.gz")
    result = runner.invoke(
        app, ["detect", str(scan), "--run", str(run_dir), "-o", str(tmp_path / "out"), "--no-mirror"]
    )
    assert result.exit_code == 0, result.output
    assert [s["seriesuid"] for s in json.loads((tmp_path / "out" / "detections.json").read_text())["scans"]] == [
        "chest"
    ]
    assert (tmp_path / "out" / "png" / "chest.png").is_file()


def test_detect_a_scan_coarser_than_the_training_scans_with_and_without_resampling(trained, tmp_path):
    """A scan at 2.5 x the pixel size: segmented on the U-Net's grid by default, as it is with --no-resample; either
    way the findings lie on the scan, in its world mm, and its mask has the scan's own shape."""
    import numpy as np

    from noduleflow.ct.resample import resample
    from noduleflow.detect import Predictor

    data, run_dir = trained
    volume = read_volume(next(data.glob("subset*/*.mhd")))
    coarse = resample(volume, volume.spacing_xyz * [2.5, 2.5, 1])
    scan = write_volume(coarse, tmp_path / "coarse.nii.gz")
    assert Predictor.from_run(run_dir, runtime="int8").grid(coarse) is not None
    lo, hi = coarse.irc_to_xyz([0, 0, 0]), coarse.irc_to_xyz(np.array(coarse.shape) - 1)
    for flag in ("--resample", "--no-resample"):
        out = tmp_path / flag
        result = runner.invoke(app, ["detect", str(scan), "--run", str(run_dir), "-o", str(out), flag])
        assert result.exit_code == 0, result.output
        findings = json.loads((out / "detections.json").read_text())["scans"][0]["findings"]
        xyz = np.array([[f["coordX"], f["coordY"], f["coordZ"]] for f in findings]).reshape(-1, 3)
        assert np.all((xyz >= np.minimum(lo, hi) - 1e-6) & (xyz <= np.maximum(lo, hi) + 1e-6))
        assert read_volume(out / "masks" / "coarse.nii.gz").shape == coarse.shape


def test_detect_with_an_incomplete_run_names_the_missing_model(trained, tmp_path):
    data, _ = trained
    (tmp_path / "run" / "segment").mkdir(parents=True)
    result = runner.invoke(app, ["detect", str(data), "--run", str(tmp_path / "run"), "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, CheckpointError)
    assert "segment/config.yaml" in str(result.exception) and "noduleflow train" in str(result.exception)


def test_a_bad_scan_among_good_ones_keeps_their_results_and_a_rerun_finishes_the_job(trained, tmp_path):
    import shutil

    data, run_dir = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".noduleflow-cache"))
    bad = copy / "subset0" / "broken.mhd"
    bad.write_text("ObjectType = Image\nNDims = 3\n")
    out = tmp_path / "out"
    (out / "png").mkdir(parents=True)
    (out / "png" / "from-an-older-run.png").write_bytes(b"stale")
    args = ["detect", str(copy), "--run", str(run_dir), "-o", str(out), "--max-candidates", "5", "--no-mirror"]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ScanError)  # `noduleflow` (cli.main) prints it as one error line, exit 2
    assert "broken.mhd" in result.exception.message and "1 of 4 scan(s) failed" in result.exception.message
    scans = sorted(p.stem for p in data.glob("subset*/*.mhd"))
    doc = json.loads((out / "detections.json").read_text())
    assert (
        sorted(s["seriesuid"] for s in doc["scans"]) == scans
        and doc["complete"] is False
        and list(doc["failed"]) == [str(bad)]
    )
    assert sorted(p.stem for p in (out / "png").glob("*.png")) == scans  # the older run's PNG is gone
    bad.unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (
        "3 scan(s) kept from the previous run" in again.output
        and json.loads((out / "detections.json").read_text())["complete"]
    )
