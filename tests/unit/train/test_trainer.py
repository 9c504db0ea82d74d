"""Trainer mechanics on a tiny linear model: early stopping, gradient clipping, best.pt by the monitor."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from noduleflow.config import config_from_dict
from noduleflow.errors import ConfigError
from noduleflow.train.checkpoint import load_checkpoint
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import wrap_model


def _trainer(lr: float, run_dir=None, **sections):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    cfg = config_from_dict({"run": {"progress": False, **sections.get("run", {})}, "optim": sections.get("optim", {})})
    wrapped = wrap_model(model, device=torch.device("cpu"), amp="off")
    return Trainer(
        wrapped,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=lr),
        loader,
        loader,
        config=cfg,
        run_dir=run_dir,
    )


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    trainer = _trainer(0.0, tmp_path, run={"epochs": 10, "patience": 2})  # lr 0: val loss never improves after epoch 1
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["epochs"] == 3 and summary["best_epoch"] == 1
    assert len(trainer.history) == 3
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_monitor_higher_is_better_for_scores():
    trainer = _trainer(0.5, run={"epochs": 3, "monitor": "val_accuracy"})
    summary = trainer.fit()
    assert summary["val_accuracy"] == max(r["val_accuracy"] for r in trainer.history)


@pytest.mark.parametrize("clip", [0.01, 0.0])
def test_gradient_clipping_bounds_the_update(clip):
    trainer = _trainer(1.0, run={"epochs": 1}, optim={"grad_clip": clip})
    before = [p.detach().clone() for p in trainer.model.module.parameters()]
    trainer.fit()  # one batch: one SGD step of lr 1, so the update is minus the (clipped) gradient
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(trainer.model.module.parameters(), before)))
    if clip:
        assert step.item() == pytest.approx(clip, rel=1e-4)
    else:
        assert step.item() > 0.05


def test_a_monitor_the_task_does_not_report_is_a_config_error():
    trainer = _trainer(0.1, run={"epochs": 1, "monitor": "val_auc"})
    trainer.metrics_fn = lambda logits, labels: {"dice": 0.5}
    with pytest.raises(ConfigError, match="val_loss, val_dice"):
        trainer.fit()


def test_val_every_validates_every_nth_epoch_and_the_last_and_picks_best_among_them(tmp_path):
    trainer = _trainer(0.5, tmp_path, run={"epochs": 5, "val_every": 2, "monitor": "val_accuracy"})
    calls = []
    evaluate = trainer.evaluate
    trainer.evaluate = lambda loader: calls.append(trainer.epoch + 1) or evaluate(loader)
    summary = trainer.fit()
    assert calls == [2, 4, 5]
    assert [("val_loss" in r) for r in trainer.history] == [False, True, False, True, True]
    validated = [r for r in trainer.history if "val_accuracy" in r]
    best = max(validated, key=lambda r: r["val_accuracy"])  # the first of equals, as _update_best keeps it
    assert summary["best_epoch"] == best["epoch"] and load_checkpoint(tmp_path / "best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_val_every_0_validates_only_the_last_epoch(tmp_path):
    trainer = _trainer(0.5, tmp_path, run={"epochs": 3, "val_every": 0})
    summary = trainer.fit()
    assert [("val_loss" in r) for r in trainer.history] == [False, False, True] and summary["best_epoch"] == 3
