"""Dice overlap for segmentation, 2D or 3D: soft (differentiable, for the loss) and hard (for reporting).

Inputs are (B, C, *spatial) tensors, spatial being (H, W) or (D, H, W), as the U-Net returns and as
`data/segmentation.py` gives masks ((B, 1, ...) bool). Dice is computed per sample and channel,
(B, C), and averaged by the caller: a nodule-sized mask scored over a whole batch at once would let
large masks drown small ones.

An empty prediction of an empty target scores 1 (nothing to find, nothing found) in both kinds: the
hard Dice defines it so, and the soft Dice's smoothing term `eps` gives the same limit.
"""

from __future__ import annotations

import torch


def soft_dice(probs: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, *spatial) probabilities in [0, 1] and targets in {0, 1} -> (B, C) soft Dice.

    2 * sum(p * t) / (sum(p) + sum(t)), each side plus `eps`: differentiable in `probs`, and equal to
    the hard Dice when `probs` are 0 or 1 (up to `eps`).
    """
    _check(probs, target)
    target = target.to(probs.dtype)
    dims = tuple(range(2, probs.ndim))
    overlap = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (2 * overlap + eps) / (total + eps)


def hard_dice(pred: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, *spatial) predictions (bool masks, or probabilities cut at `threshold`) and targets -> (B, C) Dice.

    Exact ratio of voxel counts, no smoothing; 1.0 where prediction and target are both empty.
    """
    _check(pred, target)
    pred = pred if pred.dtype == torch.bool else pred > threshold
    target = target if target.dtype == torch.bool else target > 0.5
    dims = tuple(range(2, pred.ndim))
    overlap = (pred & target).sum(dims, dtype=torch.float64)
    total = pred.sum(dims, dtype=torch.float64) + target.sum(dims, dtype=torch.float64)
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total)).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """Scalar 1 - mean soft Dice of sigmoid(`logits`) (B, C, *spatial): the segmentation trainer's loss."""
    return 1 - soft_dice(torch.sigmoid(logits.float()), target, eps=eps).mean()


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) tensors, got shape {tuple(pred.shape)}")
