"""Augmentation: shapes, exact flips, air padding, masks that follow the image, seeding."""

from __future__ import annotations

import pytest
import torch

from noduleflow.data.augment import NOISE_BANK_SIZE, Augment, _resample, _resample_separable, noise_bank


def _ball(shape, center, radius) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius**2


@pytest.mark.parametrize("spatial_dims, shape", [(3, (2, 1, 8, 12, 10)), (2, (3, 5, 12, 10))])
def test_every_transform_keeps_shape_and_dtype(spatial_dims, shape):
    x = torch.rand(shape) * 2 - 1
    aug = Augment(spatial_dims, rotate_deg=20, scale=0.2, offset_vox=2, noise_hu=25)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    sample = aug(x[0], generator=torch.Generator().manual_seed(0))
    assert sample.shape == x.shape[1:]


def test_flips_are_exact_and_the_mask_flips_with_the_image():
    x = torch.randn(64, 1, 4, 5, 6)
    mask = x > 0.5
    out, out_mask = Augment(flip_axes=(2,))(x, mask, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    same = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54
    assert torch.equal(out_mask, out > 0.5)


def test_shift_pads_with_air_not_water():
    x = torch.full((8, 1, 16, 16, 16), 0.3)
    out = Augment(flip_axes=(), offset_vox=8)(x, generator=torch.Generator().manual_seed(2))
    assert out.min().item() == pytest.approx(-1.0, abs=1e-5) and out.max().item() <= 0.3 + 1e-5
    settled = ((out - 0.3).abs() < 1e-4) | ((out + 1).abs() < 1e-4)
    assert settled.float().mean() > 0.8  # only the seam interpolates


def test_rotation_and_zoom_move_the_mask_with_the_image():
    mask = _ball((12, 32, 32), (6, 10, 20), 5)[None, None].repeat(4, 1, 1, 1, 1)  # (4, 1, 12, 32, 32)
    image = mask.float() * 2 - 1
    out, out_mask = Augment(rotate_deg=90, scale=0.2, offset_vox=3)(
        image, mask, generator=torch.Generator().manual_seed(3)
    )
    assert out_mask.dtype == torch.bool and not torch.equal(out_mask, mask)
    for o, m in zip(out, out_mask):
        bright = o > 0
        iou = (bright & m).sum() / (bright | m).sum()
        assert iou > 0.85


def test_same_generator_seed_same_result_and_noise_has_the_asked_std():
    x = torch.zeros(4, 1, 16, 16, 16)
    aug = Augment(rotate_deg=10, noise_hu=25)
    a, b = (aug(x, generator=torch.Generator().manual_seed(7)) for _ in range(2))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = Augment(flip_axes=(), noise_hu=25)(x, generator=torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx(0.025, rel=0.05)


@pytest.mark.parametrize("kwargs", [dict(spatial_dims=4), dict(flip_axes=(3,)), dict(scale=1.0), dict(noise_hu=-1.0)])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        Augment(**kwargs)


def test_wrong_rank_input_raises():
    with pytest.raises(ValueError, match="spatial dims"):
        Augment(spatial_dims=3)(torch.zeros(4, 4))


def test_the_separable_3d_resample_equals_one_trilinear_grid_sample():
    x = torch.rand(6, 2, 7, 12, 10) * 2 - 1
    aug = Augment(rotate_deg=40, scale=0.3, offset_vox=3)
    theta = aug._theta(x.shape[2:], torch.rand(6, 3) < 0.5, torch.Generator().manual_seed(4))
    close = torch.testing.assert_close
    close(_resample_separable(x, theta, -1.0), _resample(x, theta, -1.0, "bilinear"), atol=1e-5, rtol=0)
    skew = theta.clone()
    skew[:, 2, 0] = 0.2  # a D row that mixes in W: not separable, so the 3D kernel runs
    close(_resample_separable(x, skew, -1.0), _resample(x, skew, -1.0, "bilinear"), atol=0, rtol=0)


def test_a_batch_draws_each_sample_its_own_transform_as_often_as_one_sample_at_a_time():
    # an image whose every flip is told apart: a ramp along each axis
    d, h, w = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), torch.arange(6.0), indexing="ij")
    ramp = (d * 100 + h * 10 + w)[None] / 1000  # (1, 4, 5, 6)
    aug, n = Augment(), 2000
    generator = torch.Generator().manual_seed(0)
    batch = aug(ramp.expand(n, 1, 4, 5, 6).clone(), generator=generator)
    one_by_one = torch.stack([aug(ramp, generator=generator) for _ in range(400)])
    for axis in range(3):  # each axis flipped in about half of the samples, independently of the others
        flipped = (batch[:, 0].diff(dim=axis + 1) < 0).flatten(1).all(1).float()
        assert abs(flipped.mean().item() - 0.5) < 0.04
        flipped_one = (one_by_one[:, 0].diff(dim=axis + 1) < 0).flatten(1).all(1).float()
        assert abs(flipped_one.mean().item() - 0.5) < 0.08
    all_three = (batch[:, 0].diff(dim=1) < 0).flatten(1).all(1) & (batch[:, 0].diff(dim=3) < 0).flatten(1).all(1)
    assert abs(all_three.float().mean().item() - 0.25) < 0.04


def test_batch_augmentation_is_deterministic_under_a_seeded_generator_and_keeps_the_shape():
    x = torch.rand(8, 1, 6, 12, 12) * 2 - 1
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    a, b = (aug(x, generator=torch.Generator().manual_seed(11)) for _ in range(2))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # each sample its own transform


def test_noise_from_the_bank_has_mean_0_the_asked_std_and_differs_between_samples_and_batches():
    x = torch.zeros(8, 1, 16, 24, 24)
    aug = Augment(flip_axes=(), noise_hu=40)
    generator = torch.Generator().manual_seed(12)
    a, b = aug(x, generator=generator), aug(x, generator=generator)
    assert torch.equal(x, torch.zeros_like(x))  # the input is left as it was
    bank = noise_bank(torch.device("cpu"))
    for noise in (a, b):
        assert abs(noise.mean().item()) < 0.04 * 0.02 and noise.std().item() == pytest.approx(0.04, rel=0.02)
        per_sample = noise.flatten(1)
        assert not any(torch.equal(per_sample[0], row) for row in per_sample[1:])
        # one window of consecutive bank entries, so the samples of a batch never share an entry
        starts = [int(i) for i in torch.nonzero(bank * 0.04 == noise.flatten()[0]).flatten()]
        assert any(torch.equal(bank[i : i + noise.numel()] * 0.04, noise.flatten()) for i in starts)
    assert not torch.equal(a, b)  # another offset into the bank
    assert bank.shape == (NOISE_BANK_SIZE,) and abs(bank.mean().item()) < 2e-3 and abs(bank.std().item() - 1) < 2e-3
    big = Augment(flip_axes=(), noise_hu=10)(torch.zeros(1, 1, 1, 1, NOISE_BANK_SIZE // 2 + 1), generator=generator)
    assert big.std().item() == pytest.approx(0.01, rel=0.01)  # larger than half the bank: a bank of its own size


def test_out_receives_the_augmented_batch_and_equals_the_result_without_it():
    x = torch.rand(4, 1, 6, 12, 12) * 2 - 1
    for aug in (Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25), Augment(rotate_deg=15)):
        out = torch.full_like(x, float("nan"))
        into, _ = aug.batch(x, out=out, generator=torch.Generator().manual_seed(5))
        alone, _ = aug.batch(x, generator=torch.Generator().manual_seed(5))
        assert into.data_ptr() == out.data_ptr() and torch.equal(out, alone)


def test_noise_is_read_from_a_bank_on_the_batch_device():
    x = torch.zeros(2, 1, 4, 8, 8, device="meta")  # a stand-in for a GPU: any device but the CPU
    out = Augment(noise_hu=25)(x)
    assert out.device.type == "meta" and out.shape == x.shape
    assert noise_bank(torch.device("meta")).device.type == "meta"


_TRANSFORM = dict(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)


def _grid_blocks(b: int, size: tuple, seed: int):
    """Random patch grids in blocks with a margin: (first (B, 3), step (B, 3), block shape) as `PatchDataset.mm_blocks`."""
    g = torch.Generator().manual_seed(seed)
    step = (0.5 + torch.rand(b, 3, generator=g, dtype=torch.float64)).clone()  # 0.5-1.5 block voxels a patch voxel
    first = 2 + torch.rand(b, 3, generator=g, dtype=torch.float64)  # the margin, then a fraction
    extent = first + (torch.tensor(size) - 1) * step  # last patch voxel centre
    shape = tuple(int(s) for s in torch.ceil(extent.max(0).values).long() + 3)
    return first, step, shape


def _cut(blocks: torch.Tensor, first: torch.Tensor, step: torch.Tensor, size: tuple) -> torch.Tensor:
    """The patches `PatchDataset` cuts from the blocks (trilinear at first + k * step), scaled as `hu_to_unit`."""
    b, out = blocks.shape[0], []
    for i in range(b):
        axes = [first[i, a] + torch.arange(n, dtype=torch.float64) * step[i, a] for a, n in enumerate(size)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (D, H, W, 3) as x, y, z = C, R, I
        norm = (2 * grid + 1) / torch.tensor(blocks.shape[1:][::-1], dtype=torch.float64) - 1
        x = blocks[i].double().clamp(-1000, 1000)[None, None] / 1000
        out.append(torch.nn.functional.grid_sample(x, norm[None], align_corners=False)[0])
    return torch.stack(out).float()  # (B, 1, D, H, W)


@pytest.mark.parametrize("volume", ["constant", "linear"])
def test_one_resample_from_blocks_equals_cutting_then_augmenting_where_both_read_the_patch(volume):
    size, b = (6, 10, 12), 24
    first, step, shape = _grid_blocks(b, size, seed=3)
    if volume == "constant":
        blocks = torch.full((b, *shape), 300, dtype=torch.int16)
    else:  # within [-1000, 1000] HU everywhere, so clipping before or after interpolating agrees
        i, r, c = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
        blocks = -700 + 17 * i + 9 * r - 11 * c + 40 * torch.arange(b, dtype=torch.float64)[:, None, None, None] / b
        blocks = blocks.round().to(torch.int16)
    aug = Augment(**_TRANSFORM)
    torch.manual_seed(7)
    two_steps = aug.batch(_cut(blocks, first, step, size))[0]
    after = torch.rand(1)
    torch.manual_seed(7)
    one_step = aug.batch_from_blocks(blocks, first, step, size)
    assert torch.equal(torch.rand(1), after)  # the same random draws, in the same order
    assert one_step.shape == (b, 1, *size) and one_step.dtype == torch.float32
    if volume == "constant":  # also where the transform reads past the patch: it fades to air the same way
        assert (one_step - two_steps).abs().max() < 1e-5
    else:  # where the two-step path reads only the patch's own voxels, both are the ramp at the same point
        torch.manual_seed(7)
        coverage = Augment(**{**_TRANSFORM, "noise_hu": 0}).batch(torch.ones(b, 1, *size))[0]
        inside = (coverage - 1).abs() < 1e-6
        assert inside.float().mean() > 0.5
        assert (one_step - two_steps)[inside].abs().max() < 1e-4


def test_batch_from_blocks_writes_into_out_and_refuses_augmentations_without_a_transform():
    size = (4, 8, 8)
    first, step, shape = _grid_blocks(3, size, seed=1)
    blocks = torch.randint(-1000, 1000, (3, *shape), dtype=torch.int16)
    aug, out = Augment(**_TRANSFORM), torch.full((3, 1, *size), 9.0)
    torch.manual_seed(2)
    expected = aug.batch_from_blocks(blocks, first, step, size)
    torch.manual_seed(2)
    assert aug.batch_from_blocks(blocks, first, step, size, out=out) is out and torch.equal(out, expected)
    assert aug.takes_blocks and not Augment(noise_hu=25).takes_blocks and not Augment(2, rotate_deg=5).takes_blocks
    with pytest.raises(ValueError, match="rotation, zoom or shift"):
        Augment(noise_hu=25).batch_from_blocks(blocks, first, step, size)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_low_res_with_factor_one_changes_nothing_and_draws_after_everything_else(spatial_dims):
    x = torch.randn(6, 5, *([12] * spatial_dims))
    mask = torch.rand(6, 1, *([12] * spatial_dims)) > 0.7
    plain = Augment(spatial_dims, rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    identity = Augment(
        spatial_dims, rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25, low_res=1, low_res_factor=(1, 1)
    )
    coarse = Augment(
        spatial_dims, rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25, low_res=1, low_res_factor=(3, 2)
    )
    a, b, c = (aug.batch(x, mask, torch.Generator().manual_seed(4)) for aug in (plain, identity, coarse))
    assert (a[0] - b[0]).abs().max() < 1e-6  # same flips, transform and noise: the low-res draws come last
    assert torch.equal(a[1], c[1])  # the label keeps the nodule's true extent
    assert not torch.allclose(a[0], c[0])


def test_low_res_blurs_a_point_in_place_keeps_a_smooth_ramp_and_smooths_the_noise():
    # 2D crops: the channels are the neighbouring slices, coarsened too
    point = torch.zeros(8, 7, 32, 32)
    point[:, 3, 16, 16] = 1.0
    aug = Augment(2, flip_axes=(), low_res=1, low_res_factor=(3, 2.5))
    out = aug(point, generator=torch.Generator().manual_seed(0))
    assert out.amax(dim=(1, 2, 3)).max() < 0.9  # every sample coarsened (probability 1): the point is spread
    assert out[:, 2].abs().sum() > 0  # into the neighbouring slice too
    for sample in out:  # spread around where it was
        peak = torch.tensor(torch.unravel_index(sample.argmax(), sample.shape))
        assert (peak - torch.tensor([3, 16, 16])).abs().max() <= 1
    i, r, c = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (1, 24, 24)], indexing="ij")
    ramp = (0.02 * r - 0.01 * c)[None].expand(4, 1, 1, 24, 24).contiguous()  # (B, 1, D=1, H, W)
    smooth = Augment(3, flip_axes=(), low_res=1, low_res_factor=(2, 1))(
        ramp, generator=torch.Generator().manual_seed(1)
    )
    assert (smooth - ramp)[..., 3:-3, 3:-3].abs().max() < 0.02  # less than a voxel of the ramp, away from the edges
    noise = torch.randn(16, 1, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    assert Augment(3, flip_axes=(), low_res=1, low_res_factor=(3, 2.5))(noise).std() < 0.75


def test_low_res_applies_to_patches_cut_from_blocks_and_only_to_the_share_asked():
    size = (6, 10, 12)
    first, step, shape = _grid_blocks(64, size, seed=5)
    blocks = torch.randint(-1000, 1000, (64, *shape), dtype=torch.int16)
    torch.manual_seed(3)
    plain = Augment(**_TRANSFORM).batch_from_blocks(blocks, first, step, size)
    torch.manual_seed(3)
    half = Augment(**_TRANSFORM, low_res=0.5).batch_from_blocks(blocks, first, step, size)
    changed = ((half - plain).abs().amax(dim=(1, 2, 3, 4)) > 1e-6).float().mean()
    assert 0.25 < changed < 0.75


@pytest.mark.parametrize(
    "kwargs", [dict(low_res=1.5), dict(low_res=-0.1), dict(low_res_factor=(0.5, 2)), dict(low_res_factor=(2,))]
)
def test_bad_low_res_raises(kwargs):
    with pytest.raises(ValueError, match="low_res"):
        Augment(**kwargs)
