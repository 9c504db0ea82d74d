"""`noduleflow train classify` and `train malignancy --init` on a few small synthetic scans: the CT
tasks connect the data pipeline to the Trainer, and fine-tuning keeps the frozen blocks as loaded."""

import json
import sys

import pytest
import torch

from noduleflow.cli import main
from noduleflow.data import prepare
from noduleflow.synth import synthesize

FAST = [
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--no-progress",
    "--set",
    "data.epoch_samples=8",
    "--set",
    "data.val_fraction=0.34",
    "--set",
    "data.test_fraction=0",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, scans=3, seed=0, scale=0.5, workers=1, progress=False)
    prepare(out, workers=1, progress=False)
    return out


def _train(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["noduleflow", "train", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code


def test_classify_then_fine_tune_malignancy(monkeypatch, capsys, data, tmp_path):
    runs = f"run.runs_dir={tmp_path}"
    assert _train(monkeypatch, "classify", str(data), *FAST, "--set", "model.width=2", "--set", runs) == 0, (
        capsys.readouterr().err
    )
    record = json.loads((tmp_path / "classify" / "metrics.jsonl").read_text())
    assert record["epoch"] == 1 and record["step"] == 2 and 0 <= record["val_accuracy"] <= 1
    classifier = torch.load(tmp_path / "classify" / "best.pt", weights_only=True)["model"]
    assert (
        classifier["stem.0.weight"].shape == (2, 1, 3, 3, 3) and classifier["head.weight"].shape[0] == 2
    )  # nodule_net

    code = _train(
        monkeypatch,
        "malignancy",
        str(data),
        "--init",
        str(tmp_path / "classify"),
        *FAST,
        "--set",
        "data.balance=0",
        "--set",
        runs,
    )
    assert code == 0, capsys.readouterr().err
    tuned = torch.load(tmp_path / "malignancy" / "last.pt", weights_only=True)
    assert tuned["config"]["model"]["width"] == 2  # inherited from the classifier run
    for key, value in classifier.items():
        if key.startswith(("tail", "stem", "stage")) and key.endswith(
            ("weight", "bias", "running_mean", "running_var")
        ):
            assert torch.equal(tuned["model"][key], value), f"{key} should stay frozen"  # batch-norm statistics too
    assert not torch.equal(tuned["model"]["head.weight"], classifier["head.weight"])


def test_the_test_split_is_scored_at_the_threshold_chosen_on_validation(monkeypatch, capsys, data, tmp_path):
    args = [
        *FAST[:-2],
        "--set",
        "data.test_fraction=0.33",
        "--set",
        "model.width=2",
        "--set",
        f"run.runs_dir={tmp_path}",
    ]
    assert _train(monkeypatch, "classify", str(data), *args) == 0, capsys.readouterr().err
    best = torch.load(tmp_path / "classify" / "best.pt", weights_only=True)["best"]
    record = json.loads((tmp_path / "classify" / "metrics.jsonl").read_text())
    assert best["threshold"] == record["val_threshold"] and 0 <= best["threshold"] <= 1
    test = json.loads((tmp_path / "classify" / "test_metrics.json").read_text())
    assert {"f1_at_val_threshold", "precision_at_val_threshold", "recall_at_val_threshold", "f1_best", "ap"} <= set(
        test
    )
