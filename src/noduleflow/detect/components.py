"""From a nodule probability map to candidate centres: threshold, 3D connected components, sizes.

A component's centre is the probability-weighted centre of mass of its voxels (fractional I, R, C),
turned into world mm by the scan's geometry; its size is its voxel count times the voxel volume
(mm^3), reported as the diameter of the sphere of that volume: d = (6 V / pi)^(1/3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

# 26-neighbours (a thin oblique nodule stays one piece): the 13 offsets after (0, 0, 0) in raster order; each pair once
_FORWARD = np.array([(i, r, c) for i in (-1, 0, 1) for r in (-1, 0, 1) for c in (-1, 0, 1)][14:])


@dataclass(frozen=True)
class Components:
    """N connected components of a thresholded map, ordered by label.

    centers_irc: (N, 3) float voxel centres; voxels: (N,) int counts; volume_mm3 and diameter_mm:
    (N,) float; peak: (N,) highest probability inside each component.
    labels: (N,) each component's label in `marked_labels`; marked: 3 x (m,) voxel indices of every marked
    voxel and marked_labels: (m,) their labels (shared by every `take`, so selecting stays cheap): `mask` draws
    the selected components from them.
    """

    centers_irc: np.ndarray
    voxels: np.ndarray
    volume_mm3: np.ndarray
    diameter_mm: np.ndarray
    peak: np.ndarray
    labels: np.ndarray | None = None
    marked: tuple[np.ndarray, ...] | None = None
    marked_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.voxels)

    def take(self, keep: np.ndarray) -> Components:
        """The components selected by a boolean mask or an index array."""
        return replace(
            self,
            centers_irc=self.centers_irc[keep],
            voxels=self.voxels[keep],
            volume_mm3=self.volume_mm3[keep],
            diameter_mm=self.diameter_mm[keep],
            peak=self.peak[keep],
            labels=None if self.labels is None else self.labels[keep],
        )

    def voxels_at(self, points_irc: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """(K,) voxel count of the component (kept or not) that holds each of (K, 3) integer `points_irc`; 0 where
        no marked voxel lies. `marked` is in raster order, so each point is one binary search."""
        points = np.asarray(points_irc, np.int64).reshape(-1, 3)
        if self.marked is None or not len(self.marked[0]) or not len(points):
            return np.zeros(len(points), np.int64)
        flat, wanted = np.ravel_multi_index(self.marked, shape), np.ravel_multi_index(tuple(points.T), shape)
        at = np.minimum(np.searchsorted(flat, wanted), len(flat) - 1)
        return np.where(flat[at] == wanted, np.bincount(self.marked_labels)[self.marked_labels[at]], 0)

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """(I, R, C) bool: True at the voxels of these components (all False when they carry no voxels)."""
        out = np.zeros(shape, bool)
        if self.labels is not None and self.marked is not None and len(self.labels):
            chosen = np.isin(self.marked_labels, self.labels)
            out[tuple(axis[chosen] for axis in self.marked)] = True
        return out


def with_points(comps: Components, centers_irc: np.ndarray, peak: np.ndarray, spacing_xyz) -> Components:
    """`comps` followed by single-voxel candidates at (K, 3) `centers_irc` with (K,) `peak` probabilities.

    The points carry no marked voxels (labels below 0, which `mask` never draws); their size is one voxel's.
    """
    centers = np.asarray(centers_irc, np.float64).reshape(-1, 3)
    points = _components(centers, np.ones(len(centers), np.int64), spacing_xyz, np.asarray(peak, np.float32))
    labels = None if comps.labels is None else np.concatenate([comps.labels, -1 - np.arange(len(centers))])
    return replace(
        comps,
        centers_irc=np.concatenate([comps.centers_irc, points.centers_irc]),
        voxels=np.concatenate([comps.voxels, points.voxels]),
        volume_mm3=np.concatenate([comps.volume_mm3, points.volume_mm3]),
        diameter_mm=np.concatenate([comps.diameter_mm, points.diameter_mm]),
        peak=np.concatenate([comps.peak, points.peak]),
        labels=labels,
    )


def find_components(probs: np.ndarray, spacing_xyz, *, threshold: float = 0.5, min_voxels: int = 1) -> Components:
    """(I, R, C) probabilities (or a bool mask) -> the components of `probs > threshold` with >= `min_voxels` voxels.

    spacing_xyz: voxel size in mm along X, Y, Z (C, R, I), used for the volume and diameter.
    """
    probs = np.asarray(probs)
    mask = probs if probs.dtype == bool else probs > threshold
    marked = np.nonzero(mask)  # 3 x (m,), in raster order
    n, label = _label_marked(marked, mask.shape)  # label: (m,) in 0..n-1
    weights = probs[marked].astype(np.float64)  # (m,)
    voxels = np.bincount(label, minlength=n)
    total = np.bincount(label, weights, minlength=n)
    xyz = np.stack(marked, axis=1).astype(np.float64)  # (m, 3)
    weighted = np.stack([np.bincount(label, weights * xyz[:, a], minlength=n) for a in range(3)], axis=1)
    plain = (
        np.stack([np.bincount(label, xyz[:, a], minlength=n) for a in range(3)], axis=1)
        / np.maximum(voxels, 1)[:, None]
    )
    positive = total > 0
    centers = np.where(positive[:, None], weighted / np.where(positive, total, 1)[:, None], plain)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, label, weights)
    found = replace(
        _components(centers, voxels, spacing_xyz, peak.astype(np.float32)),
        labels=np.arange(n),
        marked=marked,
        marked_labels=label,
    )
    return found.take(voxels >= min_voxels)


def _label_marked(marked: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """26-connected components of the marked voxels (3 x (m,) indices in raster order): their count and (m,) labels,
    numbered in the order of each component's first voxel, as ndimage.label numbers them.

    A graph over the marked voxels only: ndimage.label walks every voxel of the volume, and a
    probability map marks a few thousand (docs/decisions.md, 2026-11-30).
    """
    m = len(marked[0])
    if m == 0:
        return 0, np.zeros(0, np.int64)
    padded = np.array(shape) + 2  # a neighbour's index never wraps into another row
    index = np.ravel_multi_index(tuple(i + 1 for i in marked), padded)  # (m,) increasing
    rows, cols = [], []
    for step in _FORWARD @ np.array([padded[1] * padded[2], padded[2], 1]):
        j = np.minimum(np.searchsorted(index, index + step), m - 1)
        linked = index[j] == index + step
        rows.append(np.flatnonzero(linked))
        cols.append(j[linked])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n, label = connected_components(
        sparse.coo_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(m, m)), directed=False
    )
    first = np.full(n, m)
    np.minimum.at(first, label, np.arange(m))
    rank = np.empty(n, np.int64)
    rank[np.argsort(first)] = np.arange(n)
    return n, rank[label]


def sphere_diameter_mm(voxels: np.ndarray, spacing_xyz) -> np.ndarray:
    """(N,) diameters (mm) of the spheres with the volume of (N,) voxel counts of spacing `spacing_xyz` (mm)."""
    return _diameter_of(_volume_mm3(voxels, spacing_xyz))


def _diameter_of(volume_mm3: np.ndarray) -> np.ndarray:
    return np.cbrt(6 * volume_mm3 / np.pi)


def _volume_mm3(voxels: np.ndarray, spacing_xyz) -> np.ndarray:
    return np.asarray(voxels, dtype=np.float64) * float(np.prod(np.asarray(spacing_xyz, dtype=np.float64)))


def _components(centers_irc: np.ndarray, voxels: np.ndarray, spacing_xyz, peak: np.ndarray) -> Components:
    """Components from centres and voxel counts: volume = voxels x voxel mm^3, diameter of the sphere of that volume."""
    volume = _volume_mm3(voxels, spacing_xyz)
    return Components(
        np.asarray(centers_irc, np.float64).reshape(-1, 3),
        np.asarray(voxels, np.int64),
        volume,
        _diameter_of(volume),
        np.asarray(peak, np.float32),
    )
