"""Threshold -> components -> world centre and equivalent-sphere diameter, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noduleflow.ct import CtVolume
from noduleflow.detect.components import find_components


def _ball(shape, center_irc, radius_mm, spacing_xyz):
    i, r, c = np.indices(shape)
    d = [
        (i - center_irc[0]) * spacing_xyz[2],
        (r - center_irc[1]) * spacing_xyz[1],
        (c - center_irc[2]) * spacing_xyz[0],
    ]
    return sum(a**2 for a in d) <= radius_mm**2


def test_sphere_gives_its_centre_in_world_mm_and_its_diameter():
    spacing = (0.7, 0.8, 1.25)
    mask = _ball((40, 50, 60), (20.0, 24.0, 31.0), 8.0, spacing)
    comps = find_components(mask, spacing)
    assert len(comps) == 1
    np.testing.assert_allclose(comps.centers_irc[0], (20.0, 24.0, 31.0), atol=1e-9)
    assert comps.voxels[0] == mask.sum()
    assert comps.volume_mm3[0] == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.03)
    assert comps.diameter_mm[0] == pytest.approx(16.0, rel=0.01)
    volume = CtVolume(np.zeros(mask.shape, np.int16), (-10.0, 20.0, -300.0), spacing, np.eye(3))
    np.testing.assert_allclose(
        volume.irc_to_xyz(comps.centers_irc[0]), (-10 + 31 * 0.7, 20 + 24 * 0.8, -300 + 20 * 1.25)
    )


def test_probabilities_are_thresholded_and_weight_the_centre():
    probs = np.zeros((5, 5, 9), np.float32)
    probs[2, 2, 1:3] = (0.6, 0.9)  # one component of two voxels, heavier on the right
    probs[2, 2, 6] = 0.7  # a second, single-voxel component
    probs[0, 0, 0] = 0.4  # below the threshold: not a component
    comps = find_components(probs, (1.0, 1.0, 1.0), threshold=0.5)
    assert len(comps) == 2
    np.testing.assert_allclose(comps.centers_irc[0], (2, 2, (1 * 0.6 + 2 * 0.9) / 1.5))
    np.testing.assert_allclose(comps.peak, (0.9, 0.7))
    assert list(comps.voxels) == [2, 1]
    assert len(find_components(probs, (1.0, 1.0, 1.0), min_voxels=2)) == 1


def test_diagonal_neighbours_are_one_component_and_empty_maps_give_none():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True
    assert len(find_components(mask, (1, 1, 1))) == 1
    empty = find_components(np.zeros((4, 4, 4), np.float32), (1, 1, 1))
    assert len(empty) == 0 and empty.centers_irc.shape == (0, 3)


def test_statistics_equal_scipys_whole_volume_ones_on_a_noisy_map():
    """The per-box computation gives what ndimage.center_of_mass / maximum / label counts give."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    probs = ndimage.gaussian_filter(rng.random((40, 50, 60)), 1.5).astype(np.float32)
    probs = (probs - probs.min()) / (probs.max() - probs.min())  # blobs of many sizes in [0, 1]
    found = find_components(probs, (0.7, 0.7, 2.0), threshold=0.6)
    labels, n = ndimage.label(probs > 0.6, structure=ndimage.generate_binary_structure(3, 3))
    assert n > 5 and len(found) == n
    index = np.arange(1, n + 1)
    np.testing.assert_allclose(found.centers_irc, ndimage.center_of_mass(probs, labels, index), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(found.peak, ndimage.maximum(probs, labels, index))
    np.testing.assert_array_equal(found.voxels, np.bincount(labels.ravel())[1:])


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)), elements=st.booleans()))
def test_components_are_scipys_26_connected_labels_in_its_order(mask):
    """Any mask, edges included (a voxel at the end of a row is no neighbour of the next row's first)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    found = find_components(mask, (1.0, 1.0, 1.0))
    assert len(found) == n
    np.testing.assert_array_equal(found.voxels, np.bincount(labels.ravel(), minlength=n + 1)[1:])
    if n:
        np.testing.assert_allclose(
            found.centers_irc, ndimage.center_of_mass(mask, labels, np.arange(1, n + 1)), atol=1e-9
        )


def test_voxels_that_touch_only_across_a_row_end_stay_apart():
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 0, 3] = mask[0, 1, 0] = True  # neighbours in memory, far apart in the volume
    mask[1, 2, 3] = True  # the last voxel of the volume
    assert len(find_components(mask, (1, 1, 1))) == 3


@settings(max_examples=60, deadline=None)
@given(arrays(bool, (5, 6, 7), elements=st.booleans()), st.data())
def test_mask_of_selected_components_is_exactly_their_voxels(mask, data):
    """`Components.mask` after any selection (as the Predictor's lung filter and ranking make) draws the chosen
    components' voxels and nothing else: scipy's labels of the same mask say which voxels those are."""
    from scipy import ndimage

    comps = find_components(mask, (1.0, 1.0, 1.0), min_voxels=1)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    chosen = comps.take(keep).take(np.argsort(-np.arange(int(keep.sum()))))  # select, then reorder
    np.testing.assert_array_equal(chosen.mask(mask.shape), np.isin(labels, np.flatnonzero(keep) + 1))


def test_voxels_at_gives_the_size_of_the_component_holding_each_point_kept_or_not():
    probs = np.zeros((4, 10, 10), np.float32)
    probs[1, 1:4, 1:4] = 0.9  # 9 voxels
    probs[2, 7, 7] = 0.8  # 1 voxel, dropped by min_voxels but still counted where it lies
    comps = find_components(probs, (1.0, 1.0, 1.0), min_voxels=2)
    assert len(comps) == 1
    points = np.array([[1, 2, 2], [1, 3, 1], [2, 7, 7], [0, 0, 0], [3, 9, 9]])
    assert comps.voxels_at(points, probs.shape).tolist() == [9, 9, 1, 0, 0]
    assert comps.voxels_at(np.zeros((0, 3)), probs.shape).tolist() == []
