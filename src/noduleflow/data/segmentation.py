"""Segmentation samples on the scan cache: random crops around nodules and lung voxels, for training.

The nodule mask is built on the fly from the annotations: a ball of the annotated diameter around
each centre, measured in world mm (so it stays round in anisotropic scans), intersected with
HU > `hu_threshold` (default NODULE_MIN_HU, -700 as in "Deep Learning with PyTorch" ch. 13) so that
the aerated lung (about -850 HU) inside the ball is not labelled nodule. Ground-glass nodules lie at
about -650..-350 HU: the earlier -400 left them out of the mask, and the U-Net learned to ignore them
(on 30 synthetic scans it found 1 of 11 ground-glass nodules).

Shapes, with k context slices: spatial_dims=2 gives image (2k + 1, H, W) (the neighbouring slices as
channels, as in "Deep Learning with PyTorch" ch. 13) and mask (1, H, W) of the centre slice;
spatial_dims=3 gives image (1, D, H, W) and mask (1, D, H, W). Images are HU / 1000 clipped to
[-1, 1], float32; masks are bool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from noduleflow.data.cache import ScanCache
from noduleflow.data.datasets import OpenScans, locate
from noduleflow.data.luna16 import Nodule
from noduleflow.data.patches import crop_box, hu_to_unit, sphere_mask

NODULE_MIN_HU = -700.0  # voxels of an annotated ball at or below this are aerated lung, not nodule (module docstring)


class NoduleMasks:
    """Nodule masks of arbitrary blocks of the cached scans (see the module docstring)."""

    def __init__(self, scans: OpenScans, nodules: Sequence[Nodule], hu_threshold: float = NODULE_MIN_HU):
        self.scans, self.hu_threshold = scans, float(hu_threshold)
        centers, inside = locate(scans, nodules, "nodules")
        self.nodules = tuple(n for n, keep in zip(nodules, inside) if keep)
        self.centers_irc = centers[inside]  # (N, 3) fractional voxels
        self._rows: dict[str, np.ndarray] = {}
        for i, nodule in enumerate(self.nodules):
            self._rows.setdefault(nodule.series_uid, []).append(i)  # type: ignore[arg-type]
        self._rows = {uid: np.asarray(rows) for uid, rows in self._rows.items()}

    def block(self, series_uid: str, lo_irc: Sequence[int], size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(hu (D, H, W) int16, mask (D, H, W) bool) of the block starting at voxel `lo_irc`, air-padded."""
        scan = self.scans(series_uid)
        hu = crop_box(scan.hu, lo_irc, size)
        rows = self._rows.get(series_uid, np.zeros(0, np.int64))
        radii = [self.nodules[i].diameter_mm / 2 for i in rows]
        mask = sphere_mask(size, lo_irc, self.centers_irc[rows], radii, scan.spacing_xyz, scan.direction)
        return hu, mask & (hu > self.hu_threshold)


class SegmentationCrops(Dataset):
    """Training crops around nodules plus random crops inside the lungs.

    crop: (H, W) for spatial_dims=2, (D, H, W) for 3. jitter: the nodule centre lands up to this many
    voxels (in-plane) away from the crop centre, so the network cannot learn "the nodule is in the
    middle"; along I it moves by up to a third of the nodule's radius, so the centre slice keeps it.
    lung_fraction: share of samples that are random crops inside the lungs (mostly negatives).
    samples_per_epoch: default len(nodules) / (1 - lung_fraction). Random choices use torch's global
    RNG (seeded per worker by `make_loader`). Returns (image, mask, index).
    """

    def __init__(
        self,
        cache: ScanCache,
        nodules: Sequence[Nodule],
        series_uids: Sequence[str] | None = None,
        *,
        spatial_dims: int = 2,
        crop: Sequence[int] | None = None,
        context: int = 3,
        jitter: int = 16,
        lung_fraction: float = 0.5,
        samples_per_epoch: int | None = None,
        hu_threshold: float = NODULE_MIN_HU,
        transform: Callable | None = None,
    ):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        crop = tuple(crop or ((64, 64) if spatial_dims == 2 else (32, 64, 64)))
        if len(crop) != spatial_dims or min(crop) < 1:
            raise ValueError(f"crop must be {spatial_dims} positive voxel counts, got {crop}")
        if not 0 <= lung_fraction < 1 or context < 0 or jitter < 0:
            raise ValueError("lung_fraction must be in [0, 1), context and jitter >= 0")
        self.scans = OpenScans(cache)
        series = sorted(set(series_uids if series_uids is not None else (n.series_uid for n in nodules)))
        self.masks = NoduleMasks(self.scans, [n for n in nodules if n.series_uid in set(series)], hu_threshold)
        self.series_uids = tuple(series)
        self.spatial_dims, self.context, self.jitter, self.transform = spatial_dims, context, jitter, transform
        self.block_size = np.array((2 * context + 1, *crop) if spatial_dims == 2 else crop, dtype=np.int64)
        n_nodules = len(self.masks.nodules)
        if samples_per_epoch is None:
            samples_per_epoch = round(n_nodules / (1 - lung_fraction)) if n_nodules else len(series)
        self.n_nodule_samples = (
            min(round(samples_per_epoch * (1 - lung_fraction)), samples_per_epoch) if n_nodules else 0
        )
        self.samples_per_epoch = int(samples_per_epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int):
        if index < self.n_nodule_samples:
            i = index % len(self.masks.nodules)
            uid = self.masks.nodules[i].series_uid
            center = self._jittered(self.masks.centers_irc[i], self.masks.nodules[i].diameter_mm / 2, uid)
        else:
            uid = self.series_uids[int(torch.randint(len(self.series_uids), ()))]
            center = self._lung_voxel(uid)
        hu, mask = self.masks.block(uid, center - self.block_size // 2, self.block_size)
        image = torch.from_numpy(hu_to_unit(hu))
        if self.spatial_dims == 2:
            image, mask = image, mask[self.context][None]  # (2k + 1, H, W), (1, H, W)
        else:
            image, mask = image[None], mask[None]  # (1, D, H, W) each
        mask = torch.from_numpy(np.ascontiguousarray(mask))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask, torch.tensor(index)

    def _jittered(self, center_irc: np.ndarray, radius_mm: float, uid: str) -> np.ndarray:
        spacing_i = self.scans(uid).spacing_xyz[2]
        reach = np.array([radius_mm / 3 / spacing_i, self.jitter, self.jitter], dtype=np.float64)
        offset = (torch.rand(3, dtype=torch.float64).numpy() * 2 - 1) * reach
        return np.floor(center_irc + offset + 0.5).astype(np.int64)

    def _lung_voxel(self, uid: str, tries: int = 32) -> np.ndarray:
        """A uniformly random lung voxel (rejection sampling in the mask's box); any voxel if no lungs."""
        mask, shape = self.scans.lung_mask(uid), np.array(self.scans(uid).shape)
        lo, extent = (mask.lo, mask.box_shape) if not mask.empty else (np.zeros(3, np.int64), shape)
        draws = lo + (torch.rand(tries, 3, dtype=torch.float64).numpy() * extent).astype(np.int64)  # (tries, 3)
        hits = np.flatnonzero(mask.contains(draws)) if not mask.empty else np.zeros(1, np.int64)
        return draws[hits[0] if hits.size else 0]
