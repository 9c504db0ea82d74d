"""Numbers that are not finite: steps with NaN/inf gradients are skipped (too many stop the run), and a layer whose
bf16 gradients a CPU's kernels get wrong is found on the first batch and trained in float32."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from noduleflow.config import config_from_dict
from noduleflow.errors import TrainingError
from noduleflow.train import wrap
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import bf16_gradient_errors, run_in_float32, wrap_model

CPU = torch.device("cpu")


class _Scaled(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `factor` (a broken kernel's garbage)."""

    @staticmethod
    def forward(ctx, w, factor):
        ctx.factor = factor
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class BrokenUnderBf16(nn.Linear):
    """A linear layer whose weight gradient is wrong whenever it runs under CPU bf16 autocast."""

    def forward(self, x):
        broken = torch.is_autocast_enabled("cpu")
        return nn.functional.linear(x, _Scaled.apply(self.weight, 1e30) if broken else self.weight, self.bias)


def _net(broken: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), (BrokenUnderBf16 if broken else nn.Linear)(8, 2))


def _trainer(model, loss_fn, *, amp="off", epochs=1, batches=10):
    x, y = torch.randn(16 * batches, 4), torch.randint(0, 2, (16 * batches,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    cfg = config_from_dict({"run": {"progress": False, "epochs": epochs, "amp": amp}})
    wrapped = wrap_model(model, device=CPU, amp=amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(wrapped, loss_fn, optimizer, loader, loader, config=cfg)


def _nan_on(steps):
    """A cross-entropy that is NaN on the given training calls (1-based; evaluation runs without grad)."""
    calls = {"n": 0}

    def loss(out, y):
        value = nn.functional.cross_entropy(out, y)
        if not torch.is_grad_enabled():
            return value
        calls["n"] += 1
        return value * float("nan") if calls["n"] in steps else value

    return loss


def test_a_step_with_nan_gradients_is_skipped_and_counted_and_the_weights_stay_finite():
    model = _net()
    trainer = _trainer(model, _nan_on({3}))
    trainer.fit()
    record = trainer.history[0]
    assert record["skipped_steps"] == 1 and record["step"] == 10  # the schedule keeps its length
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0 < trainer.evaluate(trainer.val_loader)["loss"] < 1.0


def test_an_epoch_of_nan_gradients_stops_the_run_with_the_fix():
    model = _net()
    trainer = _trainer(model, _nan_on(set(range(1, 11))))
    with pytest.raises(TrainingError, match=r"10 of the 10 optimizer steps of epoch 1.*run\.amp=off"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_gradient_errors_finds_the_broken_layer_alone():
    x = torch.randn(8, 4)
    assert bf16_gradient_errors(_net(), x) == {}  # sound CPU kernels: about 0.005 relative error
    errors = bf16_gradient_errors(_net(broken=True), x)
    assert list(errors) == ["2"] and errors["2"] > 1e20


def test_bf16_gradient_errors_leaves_the_model_and_its_batchnorm_statistics_alone():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 8, 8)
    state = torch.random.get_rng_state()
    bf16_gradient_errors(model, x)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(state, torch.random.get_rng_state())


def test_run_in_float32_computes_that_layer_in_float32_under_autocast():
    model = _net()
    keys = list(model.state_dict())
    run_in_float32(model, ["2"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model[0](torch.randn(3, 4)).dtype == torch.bfloat16
        assert model(torch.randn(3, 4)).dtype == torch.float32
    assert list(model.state_dict()) == keys


def test_auto_bf16_trains_a_layer_with_broken_bf16_gradients_in_float32(monkeypatch):
    monkeypatch.setattr(wrap, "cpu_has_native_bf16", lambda: True)  # 'auto' picks bf16 here, as on such a CPU
    model = _net(broken=True)
    trainer = _trainer(model, nn.functional.cross_entropy, amp="auto", epochs=2)
    with pytest.warns(UserWarning, match=r"bf16 kernels get the gradients of 1 layer\(s\) wrong \(relative error: 2 "):
        trainer.fit()
    assert trainer.model.policy.amp_dtype == torch.bfloat16  # the rest of the net stays in bf16
    assert all("skipped_steps" not in r for r in trainer.history)
    assert all(torch.isfinite(p).all() and p.abs().max() < 100 for p in model.parameters())


def test_an_explicit_bf16_is_not_second_guessed(monkeypatch):
    model = _net(broken=True)
    trainer = _trainer(model, nn.functional.cross_entropy, amp="bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(TrainingError):  # its garbage gradients overflow to inf: every step skipped
            trainer.fit()
