"""The U-Net's grid (`detect.grid`): a scan outside the U-Net's training spacing is segmented resampled, and its
candidates come back onto the scan's own voxels at the same world positions."""

from __future__ import annotations

import numpy as np
import pytest
from detect_phantom import NODULE_IRC, NODULE_RADIUS_MM, DenseTissue, chest

from noduleflow.ct import CtVolume
from noduleflow.ct.resample import resample
from noduleflow.detect import Predictor
from noduleflow.detect.components import find_components
from noduleflow.detect.contract import InputContract
from noduleflow.detect.grid import SegmentGrid, SpacingRange, spacing_ranges

FINE = (SpacingRange(2.0, 3.0, 4.0), SpacingRange(0.6, 1.0, 1.2), SpacingRange(0.6, 1.0, 1.2))
"""A U-Net trained on 3 mm slices of 1 mm pixels (I, R, C): the phantom's 2 mm pixels lie outside, its slices inside."""


def test_the_range_is_the_training_scans_spacing_widened_in_plane_by_the_scale_augmentation():
    ranges = spacing_ranges(np.array([[1.25, 0.7, 0.7], [2.5, 0.9, 0.9], [1.0, 0.6, 0.6]]), scale=0.1)
    low, median, high = (np.array([getattr(r, k) for r in ranges]) for k in ("low", "median", "high"))
    np.testing.assert_allclose(low, [1.0, 0.54, 0.54])
    np.testing.assert_allclose(median, [1.25, 0.7, 0.7])
    np.testing.assert_allclose(high, [2.5, 0.99, 0.99])
    assert ranges[1].target(0.95) == 0.95 and ranges[1].target(1.8) == 0.7 and ranges[0].target(0.5) == 1.25


def test_a_scan_within_the_training_spacing_and_a_run_that_recorded_none_are_segmented_as_they_are():
    volume = chest()
    assert SegmentGrid.of(volume, (SpacingRange(1, 3, 4), SpacingRange(1, 2, 3), SpacingRange(1, 2, 3))) is None
    assert SegmentGrid.of(volume, ()) is None


def test_the_grid_is_the_scan_resampled_to_the_training_median_in_place():
    volume = chest()
    grid = SegmentGrid.of(volume, FINE)
    assert grid.volume.shape == (20, 96, 128) and not grid.capped
    np.testing.assert_allclose(grid.volume.spacing_xyz, [1.0, 1.0, 3.0])
    reference = resample(volume, grid.volume.spacing_xyz)  # the package's general resampler (scipy), same grid
    np.testing.assert_allclose(grid.volume.origin_xyz, reference.origin_xyz, atol=1e-9)
    assert np.abs(grid.volume.hu.astype(int) - reference.hu).max() <= 1  # rounding of the same linear blend


@pytest.mark.parametrize(
    "direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])]
)
def test_components_on_the_grid_come_back_at_the_same_world_position_and_voxels(direction):
    """Also for scans whose axes point otherwise (a flipped or a transposed direction matrix)."""
    phantom = chest()
    volume = CtVolume(phantom.hu, phantom.origin_xyz, phantom.spacing_xyz, direction, phantom.series_uid)
    grid = SegmentGrid.of(volume, FINE)
    dense = find_components(grid.volume.hu > -400, grid.volume.spacing_xyz)
    nodule = dense.take([np.argmin(np.abs(dense.diameter_mm - 2 * NODULE_RADIUS_MM))])
    back = grid.to_scan(nodule)
    np.testing.assert_allclose(back.centers_irc[0], NODULE_IRC, atol=0.1)  # fractional voxel centre, scan's voxels
    np.testing.assert_allclose(  # the same world point, read on either grid
        volume.irc_to_xyz(back.centers_irc[0]), grid.volume.irc_to_xyz(nodule.centers_irc[0]), atol=1e-9
    )
    mask = back.mask(volume.shape)
    own = find_components(volume.hu > -400, volume.spacing_xyz)
    own_nodule = own.take([np.argmin(np.linalg.norm(own.centers_irc - NODULE_IRC, axis=1))]).mask(volume.shape)
    assert (
        mask.shape == volume.shape and (mask == own_nodule).mean() > 0.999
    )  # the nodule's voxels, give or take an edge


def test_a_grid_coarser_than_the_scan_marks_the_scan_voxels_without_holes():
    """A detector trained on coarse scans (the demo's) detecting a finer scan segments it on a coarser grid; the
    nodule's voxels on the scan are then every voxel whose centre lies in a marked grid voxel, not every other one."""
    volume = chest()
    coarse = (SpacingRange(2.0, 3.0, 4.0), SpacingRange(3.0, 4.0, 5.0), SpacingRange(3.0, 4.0, 5.0))
    grid = SegmentGrid.of(volume, coarse)
    assert grid.volume.shape == (20, 24, 32)
    dense = find_components(grid.volume.hu > -400, grid.volume.spacing_xyz)
    nodule = dense.take([np.argmin(np.abs(dense.diameter_mm - 2 * NODULE_RADIUS_MM))])
    back = grid.to_scan(nodule)
    np.testing.assert_allclose(back.centers_irc[0], NODULE_IRC, atol=0.6)
    mask = back.mask(volume.shape)
    assert mask.sum() == 4 * nodule.voxels[0]  # each grid voxel: the 2 x 2 scan voxels whose centres it holds
    i, r, c = NODULE_IRC
    assert mask[i, r - 1 : r + 2, c - 1 : c + 2].all()  # solid around the centre
    own = find_components(volume.hu > -400, volume.spacing_xyz)
    own_nodule = own.take([np.argmin(np.linalg.norm(own.centers_irc - NODULE_IRC, axis=1))]).mask(volume.shape)
    both = (mask & own_nodule).sum()  # the coarse grid blurs the edge away: most voxels, hardly any others
    assert both / own_nodule.sum() > 0.6 and both / mask.sum() > 0.9  # every other voxel alone would be 1/4


def test_only_the_lung_box_and_its_padding_is_resampled():
    volume = chest()
    lung = volume.hu < -400
    lung[:, :4], lung[:, -4:], lung[:, :, :4], lung[:, :, -4:] = False, False, False, False  # the air outside the body
    whole, boxed = SegmentGrid.of(volume, FINE), SegmentGrid.of(volume, FINE, lung, pad=(1, 2, 2))
    at = [np.flatnonzero(lung.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]  # lung slices, rows, columns
    assert boxed.offset == tuple(a[0] - 1 for a in at)  # 1 slice; 2 grid voxels: 1 scan voxel at twice the pixels
    assert boxed.box == tuple(a[-1] - a[0] + 3 for a in at)
    assert np.prod(boxed.volume.shape) < 0.7 * np.prod(whole.volume.shape)
    for grid in (whole, boxed):
        dense = find_components(grid.volume.hu > -400, grid.volume.spacing_xyz)
        nodule = dense.take([np.argmin(np.abs(dense.diameter_mm - 2 * NODULE_RADIUS_MM))])
        np.testing.assert_allclose(grid.to_scan(nodule).centers_irc[0], NODULE_IRC, atol=0.1)
        assert grid.to_scan(nodule).mask(volume.shape)[NODULE_IRC]
    assert boxed.mask_to_grid(lung).sum() == 4 * lung.sum()  # every lung voxel lies in the box


def test_a_mask_of_the_scan_is_carried_onto_the_grid_by_nearest_voxel():
    volume = chest()
    grid = SegmentGrid.of(volume, FINE)
    lung = volume.hu < -400
    on_grid = grid.mask_to_grid(lung)
    assert on_grid.shape == grid.volume.shape
    # each scan voxel becomes the 2 x 2 grid voxels whose centres lie in it
    assert np.array_equal(on_grid[:, ::2, ::2], lung) and np.array_equal(on_grid[:, 1::2, 1::2], lung)
    assert on_grid.sum() == 4 * lung.sum()


def test_a_scan_whose_grid_would_be_huge_is_segmented_coarser_within_the_bound(monkeypatch):
    """A hostile header (5 cm pixels for a U-Net of 1 mm ones) must not make the Predictor allocate without bound."""
    monkeypatch.setattr("noduleflow.detect.grid.MAX_GRID_VOXELS", 50_000)
    volume = CtVolume(np.zeros((4, 16, 16), np.int16), (0, 0, 0), (50.0, 50.0, 3.0), np.eye(3))
    grid = SegmentGrid.of(volume, FINE)  # uncapped: 4 x 800 x 800
    assert grid.capped and np.prod(grid.volume.shape) <= 50_000
    assert grid.volume.shape[0] == 4 and grid.volume.shape[1] == grid.volume.shape[2] > 16


def test_the_contract_carries_the_spacing_through_the_manifest():
    contract = InputContract(
        "segment", context=3, multiple=4, spacing_mm=((2.0, 3.0, 4.0), (0.6, 1.0, 1.2), (0.6, 1.0, 1.2))
    )
    again = InputContract.from_dict(contract.to_dict())
    assert again == contract and again.spacing_ranges[1] == SpacingRange(0.6, 1.0, 1.2)
    old = {k: v for k, v in contract.to_dict().items() if k != "spacing_mm"}  # a manifest written before the field
    assert InputContract.from_dict(old).spacing_ranges == ()


class Recording(DenseTissue):
    """DenseTissue that counts the slice pixels it was given."""

    def __init__(self):
        super().__init__()
        self.pixels = 0

    def forward(self, x):
        self.pixels += x.shape[0] * x.shape[2] * x.shape[3]
        return super().forward(x)


def test_the_predictor_segments_a_coarse_scan_on_the_grid_and_reports_on_the_scan(models):
    models.spacing_mm = tuple((r.low, r.median, r.high) for r in FINE)
    volume, pixels = chest(), {}
    for resample_on in (True, False):
        models.segment = unet = Recording()
        result = Predictor(models, runtime="torch", resample=resample_on).predict(volume)
        pixels[resample_on] = unet.pixels
        # (the stand-in marks all dense tissue: on the grid, the ring of body wall in each lung's window is one too)
        near = [f for f in result.findings if np.linalg.norm(np.subtract(f.center_irc, NODULE_IRC)) < 3]
        assert len(near) == 1 and result.warnings == []
        finding = near[0]
        np.testing.assert_allclose(finding.center_xyz, volume.irc_to_xyz(NODULE_IRC), atol=0.5)
        np.testing.assert_allclose(finding.center_irc, NODULE_IRC, atol=0.25)
        assert finding.diameter_mm == pytest.approx(2 * NODULE_RADIUS_MM, rel=0.1)
        assert result.candidate_mask.shape == volume.shape and result.candidate_mask[NODULE_IRC]
    # the lung windows on the grid: twice the rows and columns (their margins, in voxels, half the mm)
    assert 2 < pixels[True] / pixels[False] < 4


def test_a_capped_grid_is_a_warning_on_the_scan(models, monkeypatch):
    monkeypatch.setattr("noduleflow.detect.grid.MAX_GRID_VOXELS", 20 * 64 * 80)
    models.spacing_mm = tuple((r.low, r.median, r.high) for r in FINE)
    with pytest.warns(UserWarning, match="coarser spacing"):
        result = Predictor(models, runtime="torch").predict(chest())
    assert any("coarser spacing" in w for w in result.warnings) and result.findings
