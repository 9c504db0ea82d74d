"""Exact resume: 2 epochs straight == 1 epoch, stop, resume, 1 more epoch (bitwise on CPU).

The digits task shuffles (seeded loader generator), augments (torch RNG in __getitem__) and uses
dropout, so every RNG that a checkpoint must carry is exercised.
"""

import pytest
import torch

from noduleflow.config import resolve_config
from noduleflow.train import train
from noduleflow.train.checkpoint import load_checkpoint


def _cfg(runs, name, epochs, workers=0, resume=False, **extra):
    overrides = {
        "run.runs_dir": str(runs),
        "run.name": name,
        "run.epochs": epochs,
        "run.progress": False,
        "data.classes": [0, 1, 2, 3],
        "model.width": 8,
        "data.batch_size": 32,
        "data.num_workers": workers,
        "data.test_fraction": 0.1,
        "run.threads": 1,
        **extra,
    }
    return resolve_config("digits", overrides=overrides, resume=resume)


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path, workers):
    extra = {"optim.accumulate": 2, "optim.grad_clip": 1.0} if workers else {}
    train(_cfg(tmp_path, "straight", 2, workers, **extra))
    train(_cfg(tmp_path, "split", 2, workers, **extra), until_epoch=1)
    train(_cfg(tmp_path, "split", 2, workers, resume=True, **extra), resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == a["step"]
    assert torch.equal(a["rng"][0]["process"]["torch"], b["rng"][0]["process"]["torch"])
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [line[:12] for line in lines] == ['{"epoch": 1,', '{"epoch": 2,']


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    from noduleflow.errors import CheckpointError

    cfg = _cfg(tmp_path, "fresh", 1)
    with pytest.raises(CheckpointError, match="no last.pt"):
        train(cfg, resume=True)


def test_existing_run_folder_needs_resume_or_another_name(tmp_path):
    from noduleflow.errors import NoduleflowError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("task: digits\n")
    with pytest.raises(NoduleflowError) as err:
        train(_cfg(tmp_path, "taken", 1))
    assert "--resume" in err.value.message and "--run" in err.value.message and "taken" in err.value.message
