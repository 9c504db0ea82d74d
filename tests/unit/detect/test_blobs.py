"""The second candidate source: blob maxima of the lung field (`detect.blobs`, `Predictor(blob_weight=...)`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detect_phantom import CONTEXT, chest
from torch import nn

from noduleflow.detect.blobs import lung_blobs, pick_blobs
from noduleflow.detect.models import DetectorModels
from noduleflow.detect.predictor import DEFAULT_BLOB_WEIGHT, Predictor

SHAPE = (40, 64, 64)


def _lung_with(spheres, spacing_irc, hu_inside=30) -> tuple[np.ndarray, np.ndarray]:
    """(I, R, C) HU of air-filled lung (-850) holding solid spheres ((centre_irc, diameter_mm), ...), and a lung mask
    that is the whole volume but a 2-voxel rim."""
    hu = np.full(SHAPE, -850, np.int16)
    mm = np.stack(np.indices(SHAPE), -1) * np.asarray(spacing_irc)
    for centre, diameter in spheres:
        hu[((mm - np.asarray(centre) * spacing_irc) ** 2).sum(-1) <= (diameter / 2) ** 2] = hu_inside
    lung = np.zeros(SHAPE, bool)
    lung[2:-2, 2:-2, 2:-2] = True
    return hu, lung


@pytest.mark.parametrize("spacing_irc", [(1.25, 0.7, 0.7), (2.5, 1.6, 1.6)])
def test_each_small_nodule_is_a_blob_at_its_centre_and_the_stronger_first(spacing_irc):
    """Nodules of 4 and 7 mm (solid) and 6 mm (ground glass, -550 HU) in a lung at LUNA16's fine and a coarse
    spacing: each gets a blob within a voxel or two of its centre (fine pixels are read every second one)."""
    spheres = [((20, 20, 20), 7.0), ((12, 44, 40), 4.0)]
    hu, lung = _lung_with(spheres, spacing_irc)
    glass, _ = _lung_with([((28, 40, 14), 6.0)], spacing_irc, hu_inside=-550)
    hu = np.maximum(hu, glass)
    centres, response = lung_blobs(hu, lung, spacing_irc)
    assert np.all(np.diff(response) <= 0) and centres.dtype == np.int64
    for centre, _ in spheres + [((28, 40, 14), 6.0)]:
        gap_mm = np.sqrt((((centres - centre) * spacing_irc) ** 2).sum(1)).min()
        assert gap_mm <= 1.6, (centre, gap_mm)
    assert len(centres) <= 6  # three nodules in flat air: no maxima of noise


def test_no_blob_in_air_outside_the_lung_mask_or_in_an_empty_mask():
    spacing = (2.0, 1.0, 1.0)
    hu, lung = _lung_with([((20, 32, 32), 8.0)], spacing)
    lung[:, :, 20:45] = False  # the nodule lies outside the mask
    centres, _ = lung_blobs(hu, lung, spacing)
    assert len(centres) == 0
    centres, response = lung_blobs(hu, np.zeros(SHAPE, bool), spacing)
    assert centres.shape == (0, 3) and response.shape == (0,)
    centres, _ = lung_blobs(np.full(SHAPE, -850, np.int16), np.ones(SHAPE, bool), spacing)
    assert len(centres) == 0  # flat air: nothing above MIN_HU


def test_pick_keeps_probable_blobs_away_from_candidates_and_from_each_other():
    spacing = (2.0, 1.0, 1.0)
    centres = np.array([[10, 10, 10], [10, 10, 12], [20, 30, 30], [20, 31, 31], [5, 50, 50], [30, 5, 5]])
    nodule = np.array([0.9, 0.95, 0.8, 0.7, 0.4, 0.6])
    taken = np.array([[20.0, 30.0, 31.0]])  # a U-Net candidate 1 mm from blob 2
    keep = pick_blobs(centres, nodule, taken, spacing)
    # blob 1 (most probable) shadows blob 0 (2 mm away); 2 and 3 lie by the candidate; 4 is not called a nodule
    assert keep.tolist() == [1, 5]
    assert pick_blobs(centres[:0], nodule[:0], taken, spacing).tolist() == []
    assert pick_blobs(centres, nodule, np.zeros((0, 3)), spacing).tolist() == [1, 2, 5]


class _DenseCentre(nn.Module):
    """A stand-in classifier: P(nodule) 0.9 where the patch's centre voxel is denser than -400 HU, else 0.1."""

    input_size = (8, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, D, H, W) HU / 1000 -> (B, 2) logits
        d, h, w = (n // 2 for n in x.shape[2:])
        dense = (x[:, 0, d, h, w] > -0.4).float() * 2 - 1  # +1 / -1
        return torch.stack([torch.zeros_like(dense), dense * 2.2], 1)  # softmax: 0.9 or 0.1


class _Blind(nn.Module):
    """A stand-in U-Net that marks nothing: every nodule is left to the blob source."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, CONTEXT : CONTEXT + 1], -20.0)


def test_a_nodule_the_unet_misses_is_found_by_its_blob_and_ranked_below_what_both_models_agree_on():
    volume = chest()
    models = DetectorModels(_Blind(), _DenseCentre(), None, run_dir=None)  # type: ignore[arg-type]
    found = Predictor(models, runtime="torch").predict(volume).findings
    nodule = [f for f in found if np.abs(np.subtract(f.center_irc, (10, 20, 18))).max() <= 1]
    assert len(nodule) == 1
    assert nodule[0].classifier == pytest.approx(0.9, abs=0.01)
    assert nodule[0].segmentation == DEFAULT_BLOB_WEIGHT
    assert nodule[0].probability == pytest.approx(0.9 * DEFAULT_BLOB_WEIGHT, abs=0.01)
    assert all(f.probability <= nodule[0].probability + 1e-6 for f in found)
    assert Predictor(models, runtime="torch", blob_weight=0).predict(volume).findings == []


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_a_blob_weight_outside_0_to_1_is_refused(models, weight):
    with pytest.raises(ValueError, match="blob_weight"):
        Predictor(models, runtime="torch", blob_weight=weight)
