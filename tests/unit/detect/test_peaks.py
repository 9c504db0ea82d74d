"""The U-Net map's peaks below the threshold as extra candidates (`detect.peaks`, `Predictor(peaks=...)`)."""

from __future__ import annotations

import numpy as np
import pytest
from detect_phantom import chest
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.detect.peaks import probability_peaks
from noduleflow.detect.predictor import Predictor

SHAPE = (16, 48, 48)
SPACING_IRC = (3.0, 2.0, 2.0)


def _bump(probs: np.ndarray, centre, height: float, sigma: float = 1.2) -> None:
    """Add a Gaussian bump of `height` at voxel `centre` (in place, the max of the two)."""
    i, r, c = np.indices(probs.shape)
    d2 = (i - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2
    np.maximum(probs, (height * np.exp(-d2 / (2 * sigma**2))).astype(np.float32), out=probs)


def test_a_faint_peak_below_the_threshold_is_found_at_its_voxel():
    probs = np.zeros(SHAPE, np.float32)
    _bump(probs, (8, 20, 30), 0.9)  # a component (above 0.5)
    _bump(probs, (5, 30, 10), 0.2)  # a faint nodule the threshold misses
    centres, values = probability_peaks(probs, np.array([[8.0, 20.0, 30.0]]), SPACING_IRC)
    assert centres.tolist() == [[5.0, 30.0, 10.0]]
    assert values.tolist() == pytest.approx([0.2])


def test_peaks_near_a_component_or_a_higher_peak_are_left_out_and_the_rest_ranked():
    probs = np.zeros(SHAPE, np.float32)
    _bump(probs, (8, 20, 30), 0.3)  # the flank of a component at (8, 20, 31): 2 mm away
    _bump(probs, (4, 10, 10), 0.25)
    _bump(probs, (4, 11, 11), 0.2)  # 2.8 mm from the higher one: the same structure
    _bump(probs, (12, 40, 40), 0.4)
    centres, values = probability_peaks(probs, np.array([[8.0, 20.0, 31.0]]), SPACING_IRC, exclude_mm=5.0)
    assert centres.tolist() == [[12.0, 40.0, 40.0], [4.0, 10.0, 10.0]]
    assert values.tolist() == pytest.approx([0.4, 0.25])


def test_an_empty_map_or_one_below_the_floor_gives_nothing():
    for probs in (np.zeros(SHAPE, np.float32), np.full(SHAPE, 0.01, np.float32)):
        centres, values = probability_peaks(probs, np.zeros((0, 3)), SPACING_IRC)
        assert centres.shape == (0, 3) and values.shape == (0,)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 47), st.integers(0, 47)), max_size=12), st.integers(1, 5))
def test_peaks_are_local_maxima_in_the_band_far_apart_and_at_most_limit(points, limit):
    probs = np.zeros(SHAPE, np.float32)
    for k, p in enumerate(points):
        _bump(probs, p, 0.1 + 0.03 * k, sigma=0.8)
    centres, values = probability_peaks(probs, np.zeros((0, 3)), SPACING_IRC, limit=limit)
    assert len(centres) <= limit
    assert np.all(np.diff(values) <= 0)
    mm = centres * SPACING_IRC
    assert all(np.linalg.norm(mm[a] - mm[b]) > 5.0 for a in range(len(mm)) for b in range(a))
    for (i, r, c), v in zip(centres.astype(int), values, strict=True):
        assert 0.05 < v <= 0.5
        around = probs[max(i - 1, 0) : i + 2, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
        assert v == around.max()


def _predictor(models, probs, **kwargs) -> Predictor:
    predictor = Predictor(models, runtime="torch", **{"threshold": 0.5, **kwargs})  # the maps' bumps are built for 0.5
    predictor.segment = lambda volume, lung: probs  # the map under test instead of the stand-in U-Net's
    return predictor


def _map_with(components: int, faint: list[tuple[int, int, int]]) -> np.ndarray:
    """(20, 48, 64) map of the phantom: `components` bumps above the threshold, decreasing, then the `faint` ones."""
    probs = np.zeros((20, 48, 64), np.float32)
    sites = [(i, r, c) for i in (6, 10, 14) for r in (16, 24, 32) for c in (12, 18, 24, 40, 46, 52)]
    for k in range(components):
        _bump(probs, sites[k], 0.99 - 0.01 * k, sigma=0.9)
    for k, p in enumerate(faint):
        _bump(probs, p, 0.3 - 0.01 * k, sigma=0.6)
    return probs


def _lung(volume):
    return volume.hu < -400


def test_the_predictor_adds_peaks_after_the_components_in_their_order(models):
    volume = chest(nodule=False)
    probs = _map_with(5, [(8, 20, 20)])
    comps = _predictor(models, probs, peaks=True).candidates(volume, _lung(volume))
    plain = _predictor(models, probs).candidates(volume, _lung(volume))
    assert len(plain) == 5 and len(comps) == 6
    np.testing.assert_allclose(comps.centers_irc[:5], plain.centers_irc)  # the components first, highest peak first
    assert np.all(np.diff(plain.peak) < 0)
    assert comps.centers_irc[5].tolist() == [8.0, 20.0, 20.0]
    assert comps.peak[5] == pytest.approx(0.3)
    # the candidate mask draws the components' voxels only
    assert comps.mask(volume.shape).sum() == plain.mask(volume.shape).sum()


def test_the_cap_holds_and_the_peaks_take_at_most_their_slots(models):
    volume = chest(nodule=False)
    faint = [(8, 20, 20), (12, 28, 44), (6, 30, 16)]
    probs = _map_with(10, faint)
    plain = _predictor(models, probs).candidates(volume, _lung(volume))
    n = len(plain)
    assert n >= 6
    comps = _predictor(models, probs, peaks=True, max_candidates=n, rank_candidates=n, peak_share=0.3).candidates(
        volume, _lung(volume)
    )
    k = int(0.3 * n)  # the peaks' places
    assert len(comps) == n and 1 <= k <= len(faint)
    np.testing.assert_allclose(comps.centers_irc[: n - k], plain.centers_irc[: n - k])  # the best keep their place
    assert comps.centers_irc[n - k :].tolist() == [list(map(float, p)) for p in faint[:k]]
    # with room to spare the peaks fill it, whatever their slots: all components, then the three peaks
    assert len(_predictor(models, probs, peaks=True, peak_share=0.0).candidates(volume, _lung(volume))) == n + 3


def test_no_lung_or_an_empty_map_gives_no_peaks(models):
    volume = chest(nodule=False)
    probs = _map_with(0, [(8, 20, 20)])
    assert len(_predictor(models, probs, peaks=True).candidates(volume, np.zeros(volume.shape, bool))) == 0
    assert len(_predictor(models, np.zeros_like(probs), peaks=True).candidates(volume, _lung(volume))) == 0
