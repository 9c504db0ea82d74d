"""The segment task's loss and metrics (train/segment_task.py), on hand-made masks."""

from __future__ import annotations

import pytest
import torch

from noduleflow.config import SegmentConfig
from noduleflow.models.unet import segmentation_unet
from noduleflow.train.segment_task import segment_loss, segmentation_metrics, tversky_loss

POS_WEIGHT = SegmentConfig().pos_weight  # the default a run's segment.pos_weight starts from


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, 20.0, -20.0)


def test_tversky_loss_is_zero_when_right_and_weighs_misses_over_false_alarms():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    target[0, 0, 2:5, 2:5] = True  # 9 nodule voxels in sample 0, none in sample 1
    assert tversky_loss(_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)
    missed = target.clone()
    missed[0, 0, 2, 2:5] = False  # 3 voxels missed
    extra = target.clone()
    extra[1, 0, 0, 0:3] = True  # 3 false voxels, in the empty sample
    assert tversky_loss(_logits(missed), target).item() == pytest.approx(1 - (6 + 1) / (6 + 0.7 * 3 + 1), abs=1e-4)
    assert tversky_loss(_logits(extra), target).item() == pytest.approx(1 - 10 / (9 + 0.3 * 3 + 1), abs=1e-4)
    assert tversky_loss(_logits(missed), target) > tversky_loss(_logits(extra), target)


def test_segment_loss_charges_a_missed_small_nodule_per_voxel_beside_a_large_one():
    target = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    target[0, 0, 3:13, 3:13] = True  # a large nodule: 100 voxels
    target[1, 0, 7, 7:9] = True  # a small one: 2 voxels
    missed = target.clone()
    missed[1] = False
    assert segment_loss(_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)
    tversky = tversky_loss(_logits(missed), target).item()
    assert tversky == pytest.approx(1 - 101 / (100 + 0.7 * 2 + 1), abs=1e-4)  # the pooled ratio hardly notices (0.014)
    # the cross-entropy adds POS_WEIGHT * 20 (the logit's miss) per missed voxel, averaged over the 512 voxels
    assert segment_loss(_logits(missed), target).item() == pytest.approx(tversky + 2 * POS_WEIGHT * 20 / 512, abs=1e-4)


def test_metrics_count_voxels():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    target[0, 0, 0, :] = True  # 4 true voxels
    pred = torch.zeros_like(target)
    pred[0, 0, 0, :2] = pred[0, 0, 3, :2] = True  # 2 hits, 2 false
    metrics = segmentation_metrics(_logits(pred), target)
    assert metrics == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})


def test_unet_starts_by_calling_few_voxels_nodule():
    torch.manual_seed(0)
    with torch.no_grad():
        probs = torch.sigmoid(segmentation_unet(8, 3, 3).eval()(torch.randn(2, 7, 32, 32)))
    assert probs.mean() < 0.1
