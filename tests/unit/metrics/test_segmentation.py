"""Soft and hard Dice on hand-counted 2D and 3D masks; the loss has gradients; bad shapes raise."""

import pytest
import torch

from noduleflow.metrics.segmentation import dice_loss, hard_dice, soft_dice


def _masks(spatial_dims):
    """Prediction 4 voxels, target 6 voxels, overlap 3 -> Dice 2 * 3 / 10 = 0.6."""
    shape = (1, 1) + (4,) * spatial_dims
    pred, target = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    pred.view(-1)[[0, 1, 2, 9]] = True
    target.view(-1)[[0, 1, 2, 3, 4, 5]] = True
    return pred, target


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_hard_and_soft_dice_on_counted_masks(spatial_dims):
    pred, target = _masks(spatial_dims)
    assert hard_dice(pred, target).item() == pytest.approx(0.6)
    assert hard_dice(pred.float() * 0.8, target.float()).item() == pytest.approx(0.6)  # probabilities cut at 0.5
    assert soft_dice(pred.float(), target).item() == pytest.approx(0.6, abs=1e-5)
    half = pred.float() * 0.5  # soft: 2 * 1.5 / (2 + 6)
    assert soft_dice(half, target).item() == pytest.approx(3 / 8, abs=1e-5)


def test_dice_is_per_sample_and_channel_and_empty_matches_empty():
    pred, target = _masks(2)
    empty = torch.zeros_like(pred)
    both = hard_dice(torch.cat([pred, empty, pred]), torch.cat([target, empty, empty]))
    assert both.shape == (3, 1)
    assert both.flatten().tolist() == pytest.approx([0.6, 1.0, 0.0])
    assert soft_dice(empty.float(), empty).item() == pytest.approx(1.0)


def test_dice_loss_is_differentiable_and_small_for_confident_right_logits():
    _, target = _masks(3)
    logits = torch.zeros(target.shape, requires_grad=True)
    loss = dice_loss(logits, target)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert 0.0 < loss.item() < 1.0
    confident = (target.float() * 2 - 1) * 20
    assert dice_loss(confident, target).item() < 1e-6


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        soft_dice(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        hard_dice(torch.zeros(4, 4), torch.zeros(4, 4))
