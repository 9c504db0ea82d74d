"""`noduleflow export`: every model with its contract, checksum and parity; damaged exports are named; pt2 loads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from noduleflow.detect import Predictor
from noduleflow.errors import CheckpointError
from noduleflow.export import export_run
from noduleflow.export.manifest import sha256_file
from noduleflow.export.parity import TOLERANCES, ExportError, Tolerance


def _manifest(run):
    return json.loads((run / "export" / "manifest.json").read_text())


def test_every_model_is_exported_with_its_contract_checksum_and_parity(exported_run):
    _, run = exported_run
    entries = {(m["part"], m["format"]): m for m in _manifest(run)["models"]}
    assert set(entries) == {("segment", "onnx"), ("segment", "int8"), ("classify", "onnx"), ("malignancy", "onnx")}
    for (part, fmt), entry in entries.items():
        path = run / "export" / entry["file"]
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
        assert entry["source"] == {"file": f"{part}/best.pt", "sha256": sha256_file(run / part / "best.pt")}
        check, tol = entry["parity"], TOLERANCES[fmt]
        assert check["compared"] == tol.compared and check["max_abs"] >= check["mean_abs"] >= 0
        assert (tol.max_abs is None or check["max_abs"] <= tol.max_abs) and (
            tol.mean_abs is None or check["mean_abs"] <= tol.mean_abs
        )
        assert check["max_abs"] > 0 if fmt == "int8" else check["max_abs"] < 1e-3
    segment, classify = entries[("segment", "onnx")]["input"], entries[("classify", "onnx")]["input"]
    assert segment == {
        "kind": "segment",
        "hu_window": [-1000.0, 1000.0],
        "context": 3,
        "multiple": 4,
        "patch_size": [],
        "patch_mm": [],
        "spacing_mm": [
            [0.5, 2.5, 10.0],
            [0.5, 2.0, 10.0],
            [0.5, 2.0, 10.0],
        ],  # its best.pt's (conftest's TRAINED_SPACING)
    }
    assert classify["patch_size"] == [8, 16, 16] and classify["patch_mm"] == [12.0, 16.0, 16.0]
    assert entries[("malignancy", "onnx")]["input"]["patch_mm"] == []
    assert (
        "sigmoid" in entries[("segment", "onnx")]["output"]
        and "P(malignant)" in entries[("malignancy", "onnx")]["output"]
    )


def test_an_intact_export_is_kept_and_a_retrained_model_is_exported_again(exported_run, tmp_path):
    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "export").glob("*.onnx")}
    export_run(run, formats=("onnx", "int8"), scans=1)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "export").glob("*.onnx")} == stamps  # nothing exported again
    with pytest.raises(
        CheckpointError, match=r"malignancy.onnx: was exported from an older malignancy/best.pt.*noduleflow export"
    ):
        (run / "malignancy" / "best.pt").write_bytes((run / "classify" / "best.pt").read_bytes())  # "retrained"
        Predictor.from_run(run, runtime="onnx")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_export_is_a_checkpoint_error_naming_the_file_and_the_fix(exported_run, tmp_path, damage):
    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    int8 = run / "export" / "segment.int8.onnx"
    data = int8.read_bytes()
    if damage == "truncate":
        int8.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        int8.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        int8.unlink()
    with pytest.raises(CheckpointError) as err:
        Predictor.from_run(run, runtime="int8")
    assert (
        "segment.int8.onnx" in str(err.value)
        and "noduleflow export" in str(err.value)
        and "--runtime torch" in str(err.value)
    )
    assert Predictor.from_run(run, runtime="onnx").runtime == "onnx"  # the float32 files are fine


def test_a_damaged_manifest_is_named(exported_run, tmp_path):
    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    (run / "export" / "manifest.json").write_text('{"format": 1, "models": [')
    with pytest.raises(CheckpointError, match=r"manifest.json: cannot read the export manifest.*noduleflow export"):
        Predictor.from_run(run)


def test_an_export_outside_its_tolerance_fails_and_stays_out_of_the_manifest(exported_run, tmp_path, monkeypatch):
    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    before = _manifest(run)
    monkeypatch.setitem(TOLERANCES, "onnx", Tolerance("logits", max_abs=1e-12, mean_abs=None))
    with pytest.raises(ExportError, match=r"segment.onnx: differs from the eager model by .* at most"):
        export_run(run, formats=("onnx",), parts=("segment",), scans=1, force=True)
    assert _manifest(run) == before and not (run / "export" / "segment.onnx").exists()


def test_pt2_export_loads_with_torch_export_and_matches_eager_at_any_batch_and_size(exported_run, tmp_path):
    from noduleflow.detect.models import load_segmentation

    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    summary = export_run(run, formats=("pt2",), parts=("segment",), scans=1)
    [entry] = summary.entries
    assert entry["file"] == "segment.pt2" and entry["parity"]["max_abs"] <= 1e-3
    assert {(m["part"], m["format"]) for m in _manifest(run)["models"]} >= {
        ("segment", "pt2"),
        ("classify", "onnx"),
    }  # merged
    program = torch.export.load(str(run / "export" / "segment.pt2")).module()
    eager = load_segmentation(run / "segment").segment
    torch.manual_seed(0)
    for shape in [(1, 7, 24, 40), (5, 7, 64, 32)]:  # neither is the export's example
        x = torch.rand(shape) * 2 - 1
        with torch.inference_mode():
            np.testing.assert_allclose(program(x).numpy(), eager(x).numpy(), atol=1e-4)


def test_the_export_command_prints_each_files_difference(exported_run, tmp_path):
    from typer.testing import CliRunner

    from noduleflow.cli import app

    _, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--format", "int8"])
    assert result.exit_code == 0, result.output
    assert "segment.int8.onnx" in result.output and "max abs diff" in result.output and "manifest.json" in result.output
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, CheckpointError) and "nowhere" in str(result.exception)


def test_the_classifier_alone_exports_again_from_real_patches(exported_run, tmp_path):
    """A run whose classifier was trained again exports that part alone, its parity checked on the scans' patches."""
    data, source = exported_run
    run = shutil.copytree(source, tmp_path / "run")
    summary = export_run(run, formats=("onnx",), data=data, parts=("classify",), scans=1, force=True)
    [entry] = summary.entries
    assert entry["file"] == "classify.onnx" and entry["parity"]["max_abs"] <= 1e-3


def test_a_finetuned_malignancy_model_runs_jointly_with_the_classifier_and_gives_what_both_give_apart(joint_run):
    """Malignancy fine-tuned from the classifier shares its first blocks: joint.onnx (and the torch runtime's
    joint net) runs them once, and the findings' scores are those of the two models run apart."""
    from dataclasses import replace

    from noduleflow.ct import read_volume
    from noduleflow.detect.pipeline import scan_sources

    data, run = joint_run
    entries = {(m["part"], m["format"]): m for m in _manifest(run)["models"]}
    joint = entries[("joint", "onnx")]
    assert joint["file"] == "joint.onnx" and joint["parity"]["max_abs"] < 1e-3
    assert joint["sources"] == [
        {"file": f"{part}/best.pt", "sha256": sha256_file(run / part / "best.pt")}
        for part in ("classify", "malignancy")
    ]
    assert joint["input"] == entries[("classify", "onnx")]["input"] and "[:, 2:] malignancy's" in joint["output"]
    volume = read_volume(scan_sources(data)[0])
    for runtime in ("onnx", "torch"):
        together = Predictor.from_run(run, runtime=runtime, threshold=0.3)
        assert together.nets.joint is not None
        apart = Predictor(replace(together.nets, joint=None), threshold=0.3)
        a, b = together.predict(volume), apart.predict(volume)
        assert a.candidates == b.candidates > 0 and len(a.findings) == len(b.findings)
        for x, y in zip(a.findings, b.findings, strict=True):
            assert x.center_irc == y.center_irc
            np.testing.assert_allclose([x.probability, x.malignancy], [y.probability, y.malignancy], atol=1e-5)
        patches = np.random.default_rng(0).uniform(-1000, 400, (5, *together.patch_size())).astype(np.float32)
        for p, q in zip(together.classify_patches(patches), apart.classify_patches(patches), strict=True):
            np.testing.assert_allclose(p, q, atol=1e-5)


def test_a_classifier_retrained_alone_drops_the_joint_net_it_no_longer_shares_layers_with(joint_run, tmp_path):
    data, source = joint_run
    run = shutil.copytree(source, tmp_path / "run")
    model = torch.load(run / "classify" / "best.pt", weights_only=False)
    model["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in model["model"].items()}  # "retrained"
    torch.save(model, run / "classify" / "best.pt")
    with pytest.raises(CheckpointError, match=r"classify.onnx: was exported from an older classify/best.pt"):
        Predictor.from_run(run, runtime="onnx")
    export_run(run, formats=("onnx",), data=data, parts=("classify",), scans=1)
    assert ("joint", "onnx") not in {(m["part"], m["format"]) for m in _manifest(run)["models"]}
    assert not (run / "export" / "joint.onnx").exists()
    predictor = Predictor.from_run(run, runtime="onnx")
    assert predictor.nets.joint is None and predictor.nets.malignancy is not None
    assert Predictor.from_run(run, runtime="torch").nets.joint is None


def test_a_stale_joint_export_is_named(joint_run, tmp_path):
    _, source = joint_run
    run = shutil.copytree(source, tmp_path / "run")
    manifest = _manifest(run)
    for entry in manifest["models"]:  # the joint's record of malignancy/best.pt no longer matches it
        if entry["part"] == "joint":
            entry["sources"][1]["sha256"] = "0" * 64
    (run / "export" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"joint.onnx: was exported from an older malignancy/best.pt.*export"):
        Predictor.from_run(run, runtime="int8")
