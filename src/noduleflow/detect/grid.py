"""The U-Net's grid: a scan resampled to the voxel spacing the U-Net was trained at, and candidates mapped back.

The 2D U-Net works in voxels: trained on 0.6-0.9 mm pixels, it sees a 4 mm nodule imaged at 2 mm pixels as
a speck of two voxels, smaller than any nodule it learned, and misses most such nodules. So a segment run
records the voxel spacing of its training scans (`SpacingRange` per axis: the lowest, median and highest,
the ends widened by the training's scale augmentation), and where a scan's spacing along an axis lies
outside that range, the Predictor runs the U-Net on the scan resampled along that axis to the training
median (as nnU-Net does) and maps the candidates' centres and voxels back onto the scan. Only the lung's box
and what the U-Net's windows read around it are resampled: about a third of a chest scan. The classifiers
need no such step: they cut their patches in millimetres (`patch_mm`) from the scan itself.

Resampling is linear along each resampled axis, on the centre-aligned grid of `ct.resample` (the new grid
spans the same millimetres, with its centre on the old grid's centre); it is written as two gathers and a
blend per axis, a third of the time of scipy's `affine_transform` or `zoom` for the same grid
(docs/decisions.md, 2026-12-07). Growth is bounded: the grid never holds more than `MAX_GRID_VOXELS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from noduleflow.ct import CtVolume
from noduleflow.detect.components import Components

_OTHER = ((1, 2), (0, 2), (0, 1))  # per axis, the other two (to project a mask onto it)

MAX_GRID_VOXELS = 2**28
"""The most voxels the U-Net's grid may hold (a 512 x 512 x 1024 scan: 1 GiB of float32 probabilities); a scan
whose resampled grid would be larger is resampled less finely, the same factor less on each growing axis."""


@dataclass(frozen=True)
class SpacingRange:
    """The voxel spacing (mm) of a U-Net's training scans along one axis: lowest, median, highest (the ends
    widened by the training's scale augmentation): it sees a scan within [low, high] as it is."""

    low: float
    median: float
    high: float

    def target(self, spacing: float) -> float:
        """The spacing to resample an axis of `spacing` mm to: itself within the range, else the median."""
        return spacing if self.low <= spacing <= self.high else self.median


def spacing_ranges(spacings_irc: np.ndarray, scale: float = 0.0) -> tuple[SpacingRange, ...]:
    """The (I, R, C) `SpacingRange`s of (N, 3) training-scan spacings (mm, I R C), the ends widened by a scale
    augmentation of +-`scale` (0.1: zoomed by 0.9-1.1), which shows the U-Net each scan at those spacings too.
    The slice axis is not widened: a 2D U-Net's augmentation zooms within slices only."""
    s = np.asarray(spacings_irc, np.float64).reshape(-1, 3)
    if not len(s):
        return ()
    widen = np.array([0.0, scale, scale])
    low, high = s.min(0) * (1 - widen), s.max(0) * (1 + widen)
    return tuple(SpacingRange(float(a), float(m), float(b)) for a, m, b in zip(low, np.median(s, 0), high))


@dataclass(frozen=True)
class SegmentGrid:
    """A scan's box resampled for the U-Net (`volume`) and the map back; `of` gives None where no axis needs it.

    shape: the scan's (I, R, C) voxels; offset: the scan voxel where the box starts; box: its (I, R, C) scan voxels;
    volume: the box resampled; capped: the grid was held to `MAX_GRID_VOXELS` (coarser than the training median
    along the growing axes)."""

    shape: tuple[int, int, int]
    offset: tuple[int, int, int]
    box: tuple[int, int, int]
    volume: CtVolume
    capped: bool = False

    @classmethod
    def of(
        cls, volume: CtVolume, ranges: Sequence[SpacingRange], lung: np.ndarray | None = None, pad=(0, 0, 0)
    ) -> SegmentGrid | None:
        """The grid `volume` is segmented on, for a U-Net trained at `ranges` (I, R, C); None: the scan as it is.

        lung: the scan's lung mask, whose box (plus `pad` grid voxels per axis: what the U-Net's windows read
        around the lung) is all that is resampled (a third of a chest scan); None: the whole scan."""
        if len(ranges) != 3 or not volume.hu.size:
            return None
        spacing = volume.spacing_irc
        target = np.array([r.target(float(s)) for r, s in zip(ranges, spacing)])
        if np.array_equal(target, spacing):
            return None
        lo, hi = np.zeros(3, np.int64), np.array(volume.shape, np.int64)
        if lung is not None and lung.any():
            reach = np.ceil(np.asarray(pad, np.float64) * target / spacing).astype(np.int64)  # in scan voxels
            lo = np.maximum([int(np.flatnonzero(lung.any(axis=a)).min()) for a in _OTHER] - reach, 0)
            hi = np.minimum([int(np.flatnonzero(lung.any(axis=a)).max()) + 1 for a in _OTHER] + reach, hi)
        box = hi - lo
        new = np.maximum(1, np.round(box * spacing / target)).astype(np.int64)
        capped = float(np.prod(new)) > max(MAX_GRID_VOXELS, float(np.prod(box)))
        if capped:  # shrink each growing axis by the same factor until the grid fits
            grow = new > box
            fixed = float(np.prod(new[~grow]))
            shrink = (MAX_GRID_VOXELS / fixed / float(np.prod(new[grow]))) ** (1 / grow.sum())
            new[grow] = np.maximum(box[grow], np.floor(new[grow] * shrink)).astype(np.int64)
        if np.array_equal(new, box):
            return None
        hu = volume.hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        for axis in range(3):
            hu = _resize_linear(hu, axis, int(new[axis]))
        if hu.dtype != np.int16:  # a blend of int16 values: rounded, it is int16 again
            hu = np.rint(hu, out=hu).astype(np.int16)
        else:
            hu = np.ascontiguousarray(hu)
        first = lo + _source_index(0, box, new)  # the scan's fractional index of grid voxel (0, 0, 0)
        resampled = CtVolume(
            hu,
            volume.irc_to_xyz(first),
            (spacing * box / new)[::-1],
            volume.direction,
            series_uid=volume.series_uid,
        )
        return cls(*(tuple(int(n) for n in v) for v in (volume.shape, lo, box)), resampled, capped)

    @property
    def factor(self) -> np.ndarray:
        """(3,) grid voxels per scan voxel along I, R, C."""
        return np.array(self.volume.shape) / np.array(self.box)

    def mask_to_grid(self, mask: np.ndarray) -> np.ndarray:
        """An (I, R, C) bool mask of the scan on the grid (nearest voxel)."""
        (i, r, c), (n, m, k) = self.offset, self.box
        mask = mask[i : i + n, r : r + m, c : c + k]
        for axis in range(3):
            n_old, n_new = mask.shape[axis], self.volume.shape[axis]
            if n_old != n_new:
                mask = np.take(mask, _nearest(np.arange(n_new), n_old, n_new), axis=axis)
        return mask

    def to_scan(self, comps: Components) -> Components:
        """Components found on the grid, with centres (fractional) and marked voxels on the scan's voxels: a scan
        voxel is marked where a marked grid voxel lies in it, or (along an axis where the grid is coarser) where
        its centre lies in a marked grid voxel, so that a mask drawn from them has no holes either way.
        Volumes and diameters are in mm and stay; `voxels` stays the count on the grid."""
        centers = (comps.centers_irc + 0.5) / self.factor - 0.5 + np.array(self.offset)
        if comps.marked is None or not len(comps.marked[0]):
            return replace(comps, centers_irc=centers)
        marked, labels = list(comps.marked), comps.marked_labels
        for axis, (n_grid, n_scan) in enumerate(zip(self.volume.shape, self.box)):
            first, count = _scan_voxels(n_grid, n_scan)  # per grid index: the box voxels it marks
            first = first + self.offset[axis]
            j = marked[axis]
            pick = np.repeat(np.arange(len(j)), count[j])  # each marked voxel once per scan voxel it marks
            offset = np.arange(len(pick)) - np.repeat(np.cumsum(count[j]) - count[j], count[j])
            marked = [m[pick] for m in marked]
            marked[axis] = first[j][pick] + offset
            labels = labels[pick]
        return replace(comps, centers_irc=centers, marked=tuple(marked), marked_labels=labels)


def _scan_voxels(n_grid: int, n_scan: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grid index along one axis, (first scan index, count) of the scan voxels it marks: the one holding its
    centre where the grid is finer, those whose centres it holds where it is coarser (the same where equal)."""
    j = np.arange(n_grid)
    if n_grid >= n_scan:
        return _nearest(j, n_scan, n_grid), np.ones(n_grid, np.int64)
    centre = (np.arange(n_scan) + 0.5) * n_grid / n_scan  # scan voxel centres in grid units (voxel j spans [j, j+1))
    holder = np.minimum(np.floor(centre).astype(np.int64), n_grid - 1)
    count = np.bincount(holder, minlength=n_grid)
    return np.cumsum(count) - count, count


def _source_index(new_index, n_old, n_new) -> np.ndarray:
    """The old fractional index that new index `new_index` samples on the centre-aligned grid (elementwise)."""
    return (np.asarray(new_index, np.float64) + 0.5) * np.asarray(n_old, np.float64) / np.asarray(n_new) - 0.5


def _nearest(new_index: np.ndarray, n_old: int, n_new: int) -> np.ndarray:
    """The old voxel holding the centre of each new voxel `new_index` (centre-aligned grid)."""
    return np.clip(np.floor(_source_index(new_index, n_old, n_new) + 0.5), 0, n_old - 1).astype(np.intp)


def _resize_linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """`a` resampled linearly to `n` samples along `axis` (centre-aligned; edges held): a float32 array, or `a`
    itself where the length does not change."""
    n0 = a.shape[axis]
    if n == n0:
        return a
    x = np.clip(_source_index(np.arange(n), n0, n), 0, n0 - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n0 - 1)
    w = (x - i0).astype(np.float32).reshape([n if k == axis else 1 for k in range(a.ndim)])
    lo = np.take(a, i0, axis=axis).astype(np.float32, copy=False)
    hi = np.take(a, i1, axis=axis).astype(np.float32, copy=False)
    hi -= lo
    hi *= w
    hi += lo
    return hi
