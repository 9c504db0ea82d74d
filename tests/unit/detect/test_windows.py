"""Lung windows cover every lung voxel exactly once, and the U-Net's output lands on the right voxels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detect_phantom import DenseTissue

from noduleflow.data.patches import hu_to_unit
from noduleflow.detect.models import TorchNet
from noduleflow.detect.windows import full_windows, lung_windows, segment_windows


def _coverage(windows, shape):
    count = np.zeros(shape, np.int32)
    for w in windows:
        count[w.target(shape)] += 1
    return count


@pytest.mark.parametrize("chunk,margin", [(4, 0), (16, 16), (3, 5)])
def test_every_lung_voxel_is_predicted_exactly_once(chunk, margin):
    rng = np.random.default_rng(0)
    lung = np.zeros((23, 40, 50), bool)
    lung[3:9, 5:20, 7:19] = True
    lung[12:20, 18:37, 30:47] = True
    lung &= rng.random(lung.shape) < 0.9
    windows = lung_windows(lung, chunk=chunk, margin=margin, multiple=4)
    count = _coverage(windows, lung.shape)
    assert count.max() == 1 and np.all(count[lung] == 1)
    assert all(w.h % 4 == 0 and w.w % 4 == 0 and w.i1 - w.i0 <= chunk for w in windows)
    assert not count[:3].any() and not count[9:12].any()  # slices without lung are skipped


def test_full_windows_cover_the_whole_scan_once():
    count = _coverage(full_windows((10, 30, 35), chunk=4, multiple=8), (10, 30, 35))
    assert np.all(count == 1)


def test_segmentation_places_each_slice_prediction_on_its_voxels():
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 200, size=(9, 21, 26)).astype(np.int16)
    lung = np.zeros(hu.shape, bool)
    lung[2:8, 3:15, 5:22] = True
    windows = lung_windows(lung, chunk=4, margin=2, multiple=4)
    probs = segment_windows(TorchNet(DenseTissue()), hu, windows, context=3, batch=3)
    expected = torch.sigmoid((torch.from_numpy(hu_to_unit(hu)) + 0.4) * 50).numpy()
    covered = _coverage(windows, hu.shape) == 1
    np.testing.assert_allclose(probs[covered], expected[covered], atol=1e-6)
    assert not probs[~covered].any()


def test_lungs_far_apart_get_a_box_each():
    lung = np.zeros((4, 40, 120), bool)
    lung[:, 10:30, 5:30] = lung[:, 10:30, 80:110] = True
    windows = lung_windows(lung, chunk=8, margin=4, multiple=4)
    assert len(windows) == 2
    assert _coverage(windows, lung.shape)[:, :, 45:65].sum() == 0  # the gap between them is not segmented
    assert np.all(_coverage(windows, lung.shape)[lung] == 1)


def test_mirror_averages_each_window_with_its_left_right_mirror_image():
    def left_half(x):  # (B, D, h, w) -> (B, 1, h, w): a net that marks only the left half of whatever it sees
        logits = np.full((x.shape[0], 1, *x.shape[2:]), -30.0, np.float32)
        logits[..., : x.shape[-1] // 2] = 30.0
        return logits

    hu = np.zeros((3, 8, 12), np.int16)
    windows = full_windows(hu.shape, chunk=2, multiple=4)
    plain = segment_windows(left_half, hu, windows, context=1)
    mirrored = segment_windows(left_half, hu, windows, context=1, mirror=True)
    np.testing.assert_allclose(plain[..., :6], 1.0)
    np.testing.assert_allclose(plain[..., 6:], 0.0, atol=1e-12)
    np.testing.assert_allclose(mirrored, 0.5)  # each half marked by one of the two passes
