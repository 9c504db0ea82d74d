"""Random augmentation as torch ops, applied after the cache to samples or whole batches.

Flips are exact (`torch.flip`); rotation, zoom and shift are folded into one affine resample with
`affine_grid` / `grid_sample`, which pads with air rather than with 0 (= water after scaling).
A segmentation mask gets the same geometric transform (nearest neighbour) and no noise.

A 3D image is resampled in two separable steps that give the trilinear result of one 3D `grid_sample`
(to float rounding): the rotation is in-plane, so every output slice reads one fractional input slice.
A linear blend of two slices along I, then one 2D bilinear `grid_sample` over all slices at once, is
about 3x faster on a CPU than the 3D kernel, which is most of the cost of a training batch.

Training's mm patches (`PatchDataset` with `size_mm`, augmented on the CPU by `PatchLoader`) skip the cut:
`batch_from_blocks` resamples each patch's source block once, through the mm grid and the transform composed
(both affine), instead of interpolating it to the patch and the patch again. The same draws, the same
transform, the same air beyond the patch; one interpolation less of blur (the two paths agree exactly on
linear HU ramps and differ only at sharp edges), and a third less work per batch (docs/decisions.md).

The Gaussian noise is read, not drawn: each batch adds a window at a random offset of a bank of standard
normals drawn once per process (`noise_bank`, from a fixed seed) and scaled by `noise_hu`. Every voxel still
gets an N(0, noise_hu) value and the voxels of one batch get distinct bank entries; windows of different
batches may overlap, so two batches can share noise values at shifted positions, which is harmless for an
augmentation. Drawing 0.5 M normals a batch was the largest single cost of augmenting on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

NOISE_BANK_SIZE = 1 << 22
"""Standard normals in the noise bank (16 MB of float32): 8x a 32-patch batch of 16 x 32 x 32 voxels."""
_NOISE_BANK_SEED = 20261206


@dataclass(frozen=True)
class Augment:
    """Random flips, in-plane rotation, zoom, shift and HU noise for (C, *spatial) or (B, C, *spatial) tensors.

    spatial_dims: 3 for (D, H, W) = (I, R, C) patches, 2 for (H, W) slices.
    flip_axes: spatial axes (0 = first spatial axis) each flipped with probability 1/2; None: all.
    rotate_deg: rotation about the slice axis I (within the R-C plane) by up to +-rotate_deg degrees:
        in-plane, because CT voxels are often coarser along I.
    scale: zoom by a factor in [1 - scale, 1 + scale]. offset_vox: shift by up to +-offset_vox voxels per axis.
    noise_hu: standard deviation of added Gaussian noise in HU (inputs are HU / 1000, see `hu_to_unit`).
    low_res: probability that a sample is shown as if scanned with coarser voxels, after the noise (nnU-Net's
        low-resolution simulation): averaged down to 1 / f of its voxels per axis (each voxel the mean of its
        footprint, as a coarse scanner's partial volume) and interpolated back (linear, as `detect.grid` brings a
        coarse scan to the U-Net's spacing), so the noise is smoothed too. f is drawn in [1, low_res_factor[0]]
        in-plane and [1, low_res_factor[1]] along the slice axis: D for 3D, and for 2D the channels, which are
        the neighbouring slices of the U-Net's crops. The label (mask) is unchanged.
    pad: value shown where the transform looks outside the input (-1 = air after scaling).
    """

    spatial_dims: int = 3
    flip_axes: tuple[int, ...] | None = None
    rotate_deg: float = 0.0
    scale: float = 0.0
    offset_vox: float = 0.0
    noise_hu: float = 0.0
    low_res: float = 0.0
    low_res_factor: tuple[float, float] = (3.0, 2.5)
    pad: float = -1.0

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        axes = tuple(range(self.spatial_dims)) if self.flip_axes is None else tuple(self.flip_axes)
        if any(a not in range(self.spatial_dims) for a in axes):
            raise ValueError(f"flip_axes {axes} must lie in 0..{self.spatial_dims - 1}")
        if min(self.rotate_deg, self.scale, self.offset_vox, self.noise_hu) < 0 or self.scale >= 1:
            raise ValueError("rotate_deg, offset_vox and noise_hu must be >= 0, and scale in [0, 1)")
        factor = tuple(float(f) for f in self.low_res_factor)
        if not 0 <= self.low_res <= 1 or len(factor) != 2 or min(factor) < 1:
            raise ValueError(f"low_res must lie in [0, 1] and low_res_factor be two factors >= 1, got {factor}")
        object.__setattr__(self, "flip_axes", axes)
        object.__setattr__(self, "low_res_factor", factor)

    def warm_up(self) -> None:
        """Draw the CPU noise bank now (else on the first batch): `PatchLoader` calls this before it forks its
        workers, which then share the parent's bank instead of each drawing its own every epoch."""
        if self.noise_hu:
            noise_bank(torch.device("cpu"))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Augment one sample (C, *spatial) or a batch (B, C, *spatial); returns image or (image, mask).

        Random numbers come from `generator`, else from torch's global RNG (seeded per worker).
        """
        batched = image.dim() == self.spatial_dims + 2
        if not batched and image.dim() != self.spatial_dims + 1:
            raise ValueError(
                f"expected (C, *spatial) or (B, C, *spatial) with {self.spatial_dims} spatial dims, got {tuple(image.shape)}"
            )
        x = image if batched else image[None]
        m = None if mask is None else (mask if batched else mask[None])
        x, m = self.batch(x, m, generator)
        if not batched:
            x, m = x[0], None if m is None else m[0]
        return x if mask is None else (x, m)

    def batch(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        out: torch.Tensor | None = None,
    ):
        """(B, C, *spatial) -> (image, mask or None), each sample with its own random transform.

        out: a float32 tensor of x's shape that receives the image (e.g. shared memory in a DataLoader
        worker, which then sends the batch to the main process without a copy); x itself is never changed.
        """
        image, b, s = x, x.shape[0], self.spatial_dims
        flips = torch.rand(b, s, generator=generator) < 0.5  # (B, S)
        flips[:, [a for a in range(s) if a not in self.flip_axes]] = False
        if self.rotate_deg or self.scale or self.offset_vox:
            theta = self._theta(x.shape[2:], flips, generator).to(x)  # (B, S, S + 1)
            x, mask = (
                _resample_separable(x, theta, self.pad) if s == 3 else _resample(x, theta, self.pad, "bilinear"),
                None if mask is None else _resample(mask.float(), theta, 0.0, "nearest").to(mask.dtype),
            )
        else:
            for a in range(s):
                f = flips[:, a].view(-1, *[1] * (x.dim() - 1)).to(x.device)  # (B, 1, ...)
                x = torch.where(f, x.flip(2 + a), x)
                if mask is not None:
                    mask = torch.where(f, mask.flip(2 + a), mask)
        if self.noise_hu:
            noise = _noise_window(x.shape, x.device, generator).view(x.shape).to(x.dtype)  # (B, C, *spatial) N(0, 1)
            scale = self.noise_hu / 1000.0
            if out is not None:
                x = torch.add(x, noise, alpha=scale, out=out)
            else:  # in place into the resample's (or the flips') own output, never into the input
                x = x.add(noise, alpha=scale) if x is image else x.add_(noise, alpha=scale)
        elif out is not None:
            x = out.copy_(x)
        if self.low_res:
            x = self._low_res(x if x is not image else x.clone(), generator)
        return x, mask

    @property
    def takes_blocks(self) -> bool:
        """Whether `batch_from_blocks` applies: 3D, with rotation, zoom or shift."""
        return self.spatial_dims == 3 and bool(self.rotate_deg or self.scale or self.offset_vox)

    def batch_from_blocks(
        self,
        blocks: torch.Tensor,
        first: torch.Tensor,
        step: torch.Tensor,
        size: tuple[int, int, int],
        generator: torch.Generator | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cut and augment a batch of mm patches in one resample: (B, 1, *size) float32, as `batch` would give
        for the patches `PatchDataset` cuts from these blocks, but interpolated once instead of twice.

        blocks: (B, MD, MH, MW) HU (any real dtype), each sample's source voxels with a margin around its patch;
        first: (B, 3) float64 position in its block (I, R, C voxels) of the patch's first voxel centre;
        step: (B, 3) block voxels per patch voxel. The random draws are `batch`'s, in the same order (so the same
        RNG state gives the same flips, transform and noise); HU is clipped and scaled (`hu_to_unit`) before
        the interpolation, and what the transform brings in from beyond the patch fades to `pad` over one
        voxel, as with the patch's own zero padding in `batch`. 3D with rotation, zoom or shift only.
        """
        if not self.takes_blocks:
            raise ValueError("batch_from_blocks needs a 3D Augment with rotation, zoom or shift")
        b = blocks.shape[0]
        flips = torch.rand(b, 3, generator=generator) < 0.5  # as in `batch`: flips, transform, then noise
        flips[:, [a for a in range(3) if a not in self.flip_axes]] = False
        theta = self._theta(torch.Size(size), flips, generator)
        x = _resample_blocks(blocks, first.numpy(), step.numpy(), size, theta, self.pad).view(b, 1, *size)
        if self.noise_hu:
            noise = _noise_window(x.shape, x.device, generator).view(x.shape)
            x = torch.add(x, noise, alpha=self.noise_hu / 1000.0, out=out)
        elif out is not None:
            x = out.copy_(x)
        return self._low_res(x, generator) if self.low_res else x

    def _low_res(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Each sample of the (B, C, *spatial) batch, with probability `low_res`, coarsened and interpolated back
        in place (see the class docstring); the draws come after all of `batch`'s, so they change none of those."""
        b = x.shape[0]
        picked = torch.rand(b, generator=generator) < self.low_res
        factors = 1 + torch.rand(b, 2, generator=generator, dtype=torch.float64) * (
            torch.tensor(self.low_res_factor, dtype=torch.float64) - 1
        )
        for i in torch.nonzero(picked).flatten().tolist():
            in_plane, along = factors[i].tolist()
            # one (1, 1, D, H, W) volume: 3D samples per channel, 2D samples with their channels as slices
            volume = x[i : i + 1].transpose(0, 1) if self.spatial_dims == 3 else x[i : i + 1, None]
            full = volume.shape[2:]
            coarse = [max(1, round(n / f)) for n, f in zip(full, (along, in_plane, in_plane))]
            smooth = F.interpolate(
                F.adaptive_avg_pool3d(volume, coarse), size=full, mode="trilinear", align_corners=False
            )
            volume.copy_(smooth)
        return x

    def _theta(self, spatial: torch.Size, flips: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, S, S + 1) affine matrices in affine_grid's (x, y[, z]) = (W, H[, D]) axis order."""
        b, s = flips.shape[0], self.spatial_dims
        u = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: E731 - a one-line U(-1, 1) sampler
        angle = u(b) * math.radians(self.rotate_deg)
        zoom = 1 + u(b) * self.scale
        theta = torch.zeros(b, s, s + 1, dtype=torch.float64)
        theta[:, :s, :s] = torch.eye(s, dtype=torch.float64)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos  # in the W-H plane
        sign = torch.where(flips.flip(1), -1.0, 1.0).double()  # (B, S) in W, H, D order
        theta[:, :, :s] = theta[:, :, :s] * sign[:, None, :] / zoom[:, None, None]
        size = torch.tensor(list(spatial)[::-1], dtype=torch.float64)  # (S,) W, H, D voxels
        theta[:, :, s] = u(b, s) * self.offset_vox * 2 / size  # voxels -> [-1, 1] units
        return theta.float()


@lru_cache(maxsize=4)
def noise_bank(device: torch.device, size: int = NOISE_BANK_SIZE) -> torch.Tensor:
    """(size,) float32 standard normals on `device`, drawn once per process and device from a fixed seed.

    The same values in every process (so a run's noise depends only on the offsets its RNG draws); the
    offsets, drawn from the augmenting process's RNG, make the batches differ.
    """
    bank = torch.randn(size, generator=torch.Generator().manual_seed(_NOISE_BANK_SEED))
    return bank.to(device)


def _noise_window(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """math.prod(shape) consecutive standard normals from a random offset of the bank on `device`.

    The offset comes from `generator` (else torch's global RNG). A batch larger than half the bank gets a
    bank of twice its size, drawn once for that size.
    """
    n = math.prod(shape)
    bank = noise_bank(device) if 2 * n <= NOISE_BANK_SIZE else noise_bank(device, 2 * n)
    on = None if generator is None else generator.device  # randint draws where its generator lives
    start = int(torch.randint(0, bank.numel() - n + 1, (1,), generator=generator, device=on).item())
    return bank[start : start + n]


def _resample(x: torch.Tensor, theta: torch.Tensor, pad: float, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - pad, grid, mode=mode, padding_mode="zeros", align_corners=False) + pad


def _resample_separable(x: torch.Tensor, theta: torch.Tensor, pad: float) -> torch.Tensor:
    """`_resample(x, theta, pad, "bilinear")` for (B, C, D, H, W) and a theta whose D row and column are diagonal.

    Output slice d reads input slice z = a_d * d + t_d (affine_grid's normalised coordinates, align_corners
    False): blend slices floor(z) and floor(z) + 1 (zero beyond the volume, as grid_sample's zero padding),
    then resample every slice with the in-plane 2 x 3 part of theta, the slices as channels of one 2D call.
    """
    b, c, d, h, w = x.shape
    if theta[:, 2, :2].any() or theta[:, :2, 2].any():
        return _resample(x, theta, pad, "bilinear")
    centres = (2 * torch.arange(d, dtype=torch.float32, device=x.device) + 1) / d - 1  # (D,) normalised
    z = ((theta[:, 2, 2:3] * centres + theta[:, 2, 3:4] + 1) * d - 1) / 2  # (B, D) input slices
    below = torch.floor(z)
    frac = z - below  # (B, D)
    # rows of `flat`: the B x D slices of x - pad, then one zero slice that every tap outside the volume reads
    flat = x.new_empty((b * d + 1, c * h * w))
    torch.sub(x.transpose(1, 2), pad, out=flat[:-1].view(b, d, c, h, w))
    flat[-1] = 0.0
    offset = torch.arange(b, device=x.device)[:, None] * d  # (B, 1) first row of each sample
    taps = [below.long() + k for k in (0, 1)]  # (B, D) each: the slices below and above z
    rows = [torch.where((k >= 0) & (k < d), k + offset, b * d).flatten() for k in taps]
    frac = frac.reshape(b * d, 1)
    blended = flat.index_select(0, rows[0]).lerp_(flat.index_select(0, rows[1]), frac)  # (B * D, C * H * W)
    grid = F.affine_grid(theta[:, :2][:, :, [0, 1, 3]], [b, d * c, h, w], align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(blended.view(b, d * c, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, d, c, h, w).transpose(1, 2).add_(pad).contiguous()


def _tent(u: torch.Tensor, n: int) -> torch.Tensor:
    """Patch voxel coordinates u -> 1 inside [0, n - 1], falling linearly to 0 one voxel beyond: the weight a
    linear interpolation gives the patch's voxels where its neighbours beyond the patch read zero."""
    return torch.minimum(u + 1, n - u).clamp_(0, 1)


def _resample_blocks(
    blocks: torch.Tensor,
    first: np.ndarray,
    step: np.ndarray,
    size: tuple[int, int, int],
    theta: torch.Tensor,
    pad: float,
) -> torch.Tensor:
    """(B, MD, MH, MW) HU blocks -> (B, D, H, W) float32 in [-1, 1] (`hu_to_unit`): the patch grid of `first` /
    `step` ((B, 3) block voxels, I R C) moved by `theta` (B, 3, 4) of `Augment._theta` (in-plane rotation, D row
    diagonal), trilinear from the blocks, fading to `pad` over one voxel past the patch.

    theta maps an output voxel to a patch position u (patch voxels); the patch grid maps u to first + u * step
    in the block. Both are affine, so along I each output slice blends two block slices, and in-plane one 2D
    bilinear `grid_sample` over the blended slices (as channels) takes the composed 2 x 3 matrix. The
    coordinates are a few numbers a sample: numpy, whose calls cost a fraction of torch's on arrays this small.
    """
    b, md, mh, mw = blocks.shape
    d, h, w = size
    th = theta.double().numpy()  # (B, 3, 4)
    # the blocks clipped and scaled as `hu_to_unit`, minus pad (grid_sample's zero padding then shows pad), in
    # rows of one buffer whose last row stays zero: the slice that taps past the block read
    flat = torch.empty(b * md + 1, mh * mw)
    flat[:-1].copy_(blocks.reshape(b * md, mh * mw)).clamp_(-1000.0, 1000.0).mul_(1 / 1000.0).sub_(pad)
    flat[-1] = 0.0
    # along I: output slice k -> patch position u_z (align_corners False) -> block slice z
    centres = (2 * np.arange(d) + 1) / d - 1  # (D,) normalised
    u_z = ((th[:, 2, 2:3] * centres + th[:, 2, 3:4] + 1) * d - 1) / 2  # (B, D) patch voxels
    z = first[:, 0:1] + u_z * step[:, 0:1]  # (B, D) block slices
    below = np.floor(z).astype(np.int64)
    offset = np.arange(b)[:, None] * md
    rows = [torch.from_numpy(np.where((k >= 0) & (k < md), k + offset, b * md).ravel()) for k in (below, below + 1)]
    frac = torch.from_numpy((z - below).astype(np.float32).reshape(b * d, 1))
    blended = flat.index_select(0, rows[0]).lerp_(flat.index_select(0, rows[1]), frac)  # (B * D, MH * MW)
    # the patch's own border along I: zero padding past it fades what lies beyond over one voxel (per output
    # slice, so here on the blended slices: grid_sample is linear in them)
    blended.mul_(torch.from_numpy(np.clip(np.minimum(u_z + 1, d - u_z), 0, 1).astype(np.float32).reshape(b * d, 1)))
    # in-plane: normalised output (x, y) -> theta -> normalised patch g -> block position -> normalised block q
    n_pix, m_pix = np.array([w, h], np.float64), np.array([mw, mh], np.float64)  # x (W, C) and y (H, R) order
    st, fi = step[:, [2, 1]], first[:, [2, 1]]  # (B, 2) in x, y order
    alpha = st * n_pix / m_pix  # q = alpha * g + beta
    beta = (2 * fi + st * (n_pix - 1) + 1) / m_pix - 1
    plane = th[:, :2][:, :, [0, 1, 3]]  # (B, 2, 3) output (x, y, 1) -> g
    composed = plane * alpha[:, :, None]
    composed[:, :, 2] += beta
    grid = F.affine_grid(torch.from_numpy(composed.astype(np.float32)), [b, d, h, w], align_corners=False)
    out = F.grid_sample(blended.view(b, d, mh, mw), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # and in-plane, per axis of the patch; then pad back on, in the same pass
    g = F.affine_grid(torch.from_numpy(plane.astype(np.float32)), [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    u = (g + 1) * torch.tensor([w, h], dtype=torch.float32) / 2 - 0.5  # patch voxels, x and y
    fade = _tent(u[..., 0], w).mul_(_tent(u[..., 1], h))  # (B, H, W)
    return torch.addcmul(torch.tensor(pad), out, fade[:, None], out=out)
