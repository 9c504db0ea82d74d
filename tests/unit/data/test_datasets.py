"""Classification and segmentation datasets on the cache: where patches come from and what they hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from luna_phantoms import NODULE_DIAMETER_MM, NODULE_HU, SHAPE, nodule_xyz, phantom
from scipy.spatial.transform import Rotation
from torch.utils.data import default_collate

from noduleflow.ct import geometry
from noduleflow.data.datasets import CandidatePatches, MalignancySamples
from noduleflow.data.luna16 import Candidate, Nodule
from noduleflow.data.patches import crop, crop_mm, sphere_mask
from noduleflow.data.segmentation import SegmentationCrops

DISK_VOXELS = np.pi * (NODULE_DIAMETER_MM / 2 / 0.8) ** 2  # ~44 in the centre slice
BALL_VOXELS = 4 / 3 * np.pi * (NODULE_DIAMETER_MM / 2) ** 3 / (0.8 * 0.8 * 2.0)  # ~88


def _nodules(prepared) -> list[Nodule]:
    return [
        Nodule(v.series_uid, nodule_xyz(v), NODULE_DIAMETER_MM, k % 2 == 0) for k, v in enumerate(prepared["volumes"])
    ]


def test_patch_at_the_nodule_has_the_bright_ball_at_its_centre(luna_prepared):
    volume = luna_prepared["volumes"][1]
    ds = CandidatePatches(luna_prepared["cache"], [Candidate(volume.series_uid, nodule_xyz(volume), True, 6.0)])
    patch, label, index = ds[0]
    assert patch.shape == (1, 32, 48, 48) and patch.dtype == torch.float32
    assert label.dtype == torch.int64 and label.item() == 1 and index.item() == 0
    assert patch[0, 16, 24, 24].item() == pytest.approx(NODULE_HU / 1000, abs=0.03)
    bright = torch.nonzero(patch[0] > 0.1).double()
    assert torch.allclose(bright.mean(0), torch.tensor([16.0, 24.0, 24.0], dtype=torch.float64), atol=0.3)
    assert patch.min().item() == -1.0 and patch.max().item() <= 1.0


def test_patches_past_the_edge_are_padded_with_air_and_match_the_scan_inside(luna_prepared):
    volume = luna_prepared["volumes"][0]
    corner = volume.irc_to_xyz([2, 3, 60])
    ds = CandidatePatches(luna_prepared["cache"], [Candidate(volume.series_uid, tuple(corner), False)])
    patch = ds[0][0][0].numpy()  # (32, 48, 48), centre at voxel (2, 3, 60)
    inside = np.clip(volume.hu[0:18, 0:27, 36:64], -1000, 1000) / 1000.0
    np.testing.assert_allclose(patch[14:32, 21:48, 0:28], inside, atol=1e-6)
    assert (patch[:14] == -1).all() and (patch[:, :21] == -1).all() and (patch[:, :, 28:] == -1).all()


def test_candidates_outside_their_volume_are_skipped_with_a_count(luna_prepared):
    volume = luna_prepared["volumes"][0]
    rows = [
        Candidate(volume.series_uid, nodule_xyz(volume), True),
        Candidate(volume.series_uid, (500.0, 0.0, 0.0), False),
        Candidate(volume.series_uid, tuple(volume.irc_to_xyz([SHAPE[0], 0, 0])), False),
    ]
    with pytest.warns(UserWarning, match="skipped 2 candidates whose centre lies outside"):
        ds = CandidatePatches(luna_prepared["cache"], rows)
    assert len(ds) == 1 and ds.records == (rows[0],) and ds.labels.tolist() == [1]


def test_crop_mm_at_native_spacing_equals_crop():
    hu = np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40)).astype(np.int16)
    size, spacing_irc = np.array([5, 7, 9]), np.array([2.0, 0.8, 0.7])
    for center in ([10, 15, 20], [1, 2, 38]):
        np.testing.assert_allclose(
            crop_mm(hu, center, size, size * spacing_irc, spacing_irc), crop(hu, center, size), atol=1e-3
        )


def test_fixed_mm_patches_are_centred_on_the_nodule(luna_prepared):
    volume = luna_prepared["volumes"][2]
    ds = CandidatePatches(
        luna_prepared["cache"],
        [Candidate(volume.series_uid, nodule_xyz(volume), True)],
        size=(16, 24, 24),
        size_mm=(32.0, 38.4, 38.4),
    )  # 2 mm voxels along R and C
    patch = ds[0][0][0]
    assert patch.shape == (16, 24, 24)
    bright = torch.nonzero(patch > 0.1).double()
    assert 4 <= len(bright) <= 30
    assert torch.allclose(bright.mean(0), torch.tensor([7.5, 11.5, 11.5], dtype=torch.float64), atol=0.6)


def test_malignancy_samples_label_mal_bool_and_drop_unknown(luna_prepared):
    nodules = _nodules(luna_prepared) + [
        Nodule(luna_prepared["uids"][0], nodule_xyz(luna_prepared["volumes"][0]), 6.0, None)
    ]
    ds = MalignancySamples(luna_prepared["cache"], nodules, size=(8, 12, 12))
    assert len(ds) == 3 and ds.labels.tolist() == [1, 0, 1]
    patch, label, _ = ds[1]
    assert label.item() == 0 and patch[0, 4, 6, 6].item() == pytest.approx(0.2, abs=0.03)


def test_segmentation_2d_crop_holds_the_nodule_disk_where_hu_is_high(luna_prepared):
    ds = SegmentationCrops(
        luna_prepared["cache"], _nodules(luna_prepared), spatial_dims=2, crop=(64, 64), context=2, jitter=0
    )
    assert len(ds) == 6 and ds.n_nodule_samples == 3
    image, mask, index = ds[0]
    assert image.shape == (5, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.bool and index.item() == 0
    assert 0.8 * DISK_VOXELS <= mask.sum() <= 1.2 * DISK_VOXELS
    assert torch.allclose(
        torch.nonzero(mask[0]).double().mean(0), torch.tensor([32.0, 32.0], dtype=torch.float64), atol=0.3
    )
    assert (image[2][mask[0]] > -0.4).all()  # the centre slice is channel k


def test_a_ground_glass_nodule_is_in_the_segmentation_mask(tmp_path):
    from noduleflow.ct import CtVolume, write_volume
    from noduleflow.data import ScanCache, prepare

    solid = phantom(0)
    hu = solid.hu.copy()
    hu[hu > NODULE_HU / 2] = -500  # the ball turned ground glass, 350 HU above the lung
    volume = CtVolume(hu, solid.origin_xyz, solid.spacing_xyz, solid.direction, solid.series_uid)
    root = tmp_path / "luna"
    (root / "subset0").mkdir(parents=True)
    write_volume(volume, root / "subset0" / f"{volume.series_uid}.mhd")
    x, y, z = nodule_xyz(volume)
    (root / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{volume.series_uid},{x},{y},{z},{NODULE_DIAMETER_MM}\n"
    )
    (root / "candidates.csv").write_text(f"seriesuid,coordX,coordY,coordZ,class\n{volume.series_uid},{x},{y},{z},1\n")
    cache = ScanCache(prepare(root, workers=1, progress=False).cache.root)
    ds = SegmentationCrops(
        cache,
        [Nodule(volume.series_uid, (x, y, z), NODULE_DIAMETER_MM, None)],
        spatial_dims=2,
        crop=(64, 64),
        context=2,
        jitter=0,
    )
    _, mask, _ = ds[0]
    assert 0.8 * DISK_VOXELS <= mask.sum() <= 1.2 * DISK_VOXELS  # all of it, not only voxels above -400 HU


def test_segmentation_3d_crop_mask_is_the_ball(luna_prepared):
    ds = SegmentationCrops(luna_prepared["cache"], _nodules(luna_prepared), spatial_dims=3, crop=(16, 32, 32), jitter=4)
    torch.manual_seed(0)
    image, mask, _ = ds[1]
    assert image.shape == (1, 16, 32, 32) and mask.shape == (1, 16, 32, 32)
    assert 0.8 * BALL_VOXELS <= mask.sum() <= 1.2 * BALL_VOXELS
    assert (image[mask] > 0.1).all()


def test_random_lung_crops_are_centred_inside_the_lungs(luna_prepared):
    ds = SegmentationCrops(luna_prepared["cache"], _nodules(luna_prepared), lung_fraction=0.75)
    assert (len(ds), ds.n_nodule_samples) == (12, 3)
    torch.manual_seed(1)
    for uid in luna_prepared["uids"]:
        mask = ds.scans.lung_mask(uid)
        centres = np.array([ds._lung_voxel(uid) for _ in range(20)])
        assert mask.contains(centres).all() and len({tuple(c) for c in centres}) > 10
    image, mask, _ = ds[11]
    assert image.shape == (7, 64, 64) and mask.shape == (1, 64, 64)


def test_sphere_mask_is_round_in_world_mm_for_oblique_anisotropic_grids():
    direction = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    spacing_xyz, origin, shape = np.array([0.7, 0.9, 1.6]), np.array([3, -2, 1]), (18, 20, 22)
    center_irc = np.array([[9.3, 8.6, 12.2]])
    got = sphere_mask(shape, origin, center_irc, [5.0], spacing_xyz, direction)
    grid = np.argwhere(np.ones(shape, dtype=bool)) + origin  # every voxel of the block
    world = geometry.irc_to_xyz(grid, np.zeros(3), spacing_xyz, direction)
    centre_world = geometry.irc_to_xyz(center_irc, np.zeros(3), spacing_xyz, direction)
    want = (np.linalg.norm(world - centre_world, axis=1) <= 5.0).reshape(shape)
    np.testing.assert_array_equal(got, want)
    assert want.sum() == pytest.approx(4 / 3 * np.pi * 125 / np.prod(spacing_xyz), rel=0.1)


def test_crop_mm_reproduces_a_linear_ramp_exactly_at_any_spacing():
    """Trilinear resampling is exact on a linear function: every output voxel equals the ramp at its mm position."""
    i, r, c = np.meshgrid(*(np.arange(n) for n in (30, 40, 50)), indexing="ij")
    hu = (7 * i + 3 * r - 2 * c).astype(np.float32)
    spacing_irc, size, size_mm = np.array([2.5, 0.7, 0.8]), np.array([6, 8, 10]), np.array([20.0, 12.0, 15.0])
    center = np.array([14.3, 19.6, 24.9])
    axes = [
        ctr + (np.arange(n) - (n - 1) / 2) * mm / n / sp for ctr, n, mm, sp in zip(center, size, size_mm, spacing_irc)
    ]
    gi, gr, gc = np.meshgrid(*axes, indexing="ij")
    np.testing.assert_allclose(crop_mm(hu, center, size, size_mm, spacing_irc), 7 * gi + 3 * gr - 2 * gc, atol=1e-3)


@pytest.mark.parametrize("size_mm", [None, (10.0, 9.0, 9.0)])
def test_getitems_is_getitem_then_collate_and_its_collated_batch_is_the_same(luna_prepared, size_mm):
    volume = luna_prepared["volumes"][0]
    rows = [
        Candidate(volume.series_uid, tuple(volume.irc_to_xyz([i, 6 * i // 4, 60])), i % 3 == 0) for i in range(0, 40, 4)
    ]
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 12), size_mm=size_mm)  # some past the edge
    indices = [7, 0, 3, 3, 9]
    batch = ds.__getitems__(indices)
    expected = default_collate([ds[i] for i in indices])
    for got in (default_collate(batch), batch.collated):  # what a plain DataLoader and make_loader make of it
        assert len(got) == 3 and all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))
    assert batch.collated[0].shape == (5, 1, 6, 10, 12) and batch.collated[2].tolist() == indices


@pytest.mark.parametrize("size_mm", [(10.0, 9.0, 9.0), (30.0, 7.0, 20.0)])
def test_batched_mm_patches_equal_crop_mm_to_float_rounding_in_any_batch(luna_prepared, size_mm):
    rows = [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, 7 * i % 60, 60 - i])), i % 2 == 0)
        for v in luna_prepared["volumes"]
        for i in range(0, 40, 6)
    ]  # centres at different fractions of a voxel (blocks of different sizes, padded), some past the edge
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 12), size_mm=size_mm)
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    batch = ds.__getitems__(order).collated[0]
    for row, i in enumerate(order):
        scan = ds.scans(ds.records[i].series_uid)
        hu = crop_mm(scan.hu, ds.centers_irc[i], ds.size, size_mm, scan.spacing_xyz[::-1])
        np.testing.assert_allclose(ds.patch_hu(i), hu, rtol=0, atol=2e-3)  # HU, float32 sums in another order
        expected = np.clip(hu, -1000, 1000) / 1000
        np.testing.assert_allclose(batch[row, 0].numpy(), expected, rtol=0, atol=2e-6)
        assert torch.equal(batch[row], ds.__getitems__([i, *order[:3]]).collated[0][0])  # whatever shares its batch
    assert batch.min() >= -1 and batch.max() <= 1 and (batch == -1).any()  # air past the edge, clipped


def test_mm_blocks_hold_each_patch_grid_with_a_margin_and_defer_the_cut_when_asked(luna_prepared):
    from noduleflow.data.datasets import MmBlocks

    size_mm = (30.0, 7.0, 20.0)
    rows = [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, 7 * i % 60, 60 - i])), i % 2 == 0)
        for v in luna_prepared["volumes"]
        for i in range(0, 40, 6)
    ]  # some past the edge
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 12), size_mm=size_mm)
    index = np.random.default_rng(1).permutation(len(ds))[:9]
    blocks, first, step = ds.mm_blocks(index)
    assert blocks.dtype == torch.int16 and first.shape == step.shape == (9, 3)
    margin = np.ceil(ds._step.max(0))
    assert (first.numpy() >= margin).all()  # a transform reaching a patch voxel past the patch still reads the scan
    last = first.numpy() + (np.array(ds.size) - 1) * step.numpy()
    assert (last + 1 + margin <= np.array(blocks.shape[1:])).all()
    for row, i in enumerate(index.tolist()):
        spacing = ds.scans(ds.records[i].series_uid).spacing_xyz[::-1]
        centre = first[row].numpy() + (np.array(ds.size) - 1) / 2 * step[row].numpy()
        from_block = crop_mm(blocks[row].numpy(), centre, ds.size, size_mm, spacing)
        np.testing.assert_allclose(from_block, ds.patch_hu(i), rtol=0, atol=2e-3)  # the same grid, air included
    cut = ds.__getitems__(index.tolist()).collated
    ds.defer_mm_cut = True
    deferred = ds.__getitems__(index.tolist())
    assert isinstance(deferred, MmBlocks) and torch.equal(deferred.blocks, blocks)
    assert all(torch.equal(a, b) for a, b in zip(deferred.collated, cut))  # the patches before augmentation
