"""From a nodule probability map to candidate centres: threshold, 3D connected components, sizes.

A component's centre is the probability-weighted centre of mass of its voxels (fractional I, R, C),
turned into world mm by the scan's geometry; its size is its voxel count times the voxel volume
(mm^3), reported as the diameter of the sphere of that volume: d = (6 V / pi)^(1/3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-neighbours: a thin oblique nodule stays one piece


@dataclass(frozen=True)
class Components:
    """N connected components of a thresholded map, ordered by label.

    centers_irc: (N, 3) float voxel centres; voxels: (N,) int counts; volume_mm3 and diameter_mm:
    (N,) float; peak: (N,) highest probability inside each component.
    """

    centers_irc: np.ndarray
    voxels: np.ndarray
    volume_mm3: np.ndarray
    diameter_mm: np.ndarray
    peak: np.ndarray

    def __len__(self) -> int:
        return len(self.voxels)

    def take(self, keep: np.ndarray) -> "Components":
        """The components selected by a boolean mask or an index array."""
        return Components(self.centers_irc[keep], self.voxels[keep], self.volume_mm3[keep], self.diameter_mm[keep], self.peak[keep])


def find_components(probs: np.ndarray, spacing_xyz, *, threshold: float = 0.5, min_voxels: int = 1) -> Components:
    """(I, R, C) probabilities (or a bool mask) -> the components of `probs > threshold` with >= `min_voxels` voxels.

    spacing_xyz: voxel size in mm along X, Y, Z (C, R, I), used for the volume and diameter.
    """
    probs = np.asarray(probs)
    weights = probs.astype(np.float32, copy=False) if probs.dtype != bool else probs.astype(np.float32)
    mask = probs if probs.dtype == bool else probs > threshold
    labels, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n == 0:
        return _components(np.zeros((0, 3)), np.zeros(0, np.int64), spacing_xyz, np.zeros(0, np.float32))
    # per component inside its bounding box: ndimage.center_of_mass / maximum with `labels` walk the whole
    # volume once per statistic (1.5 s on a 107 x 224 x 224 scan), the boxes hold a few thousand voxels
    centers, voxels, peak = np.zeros((n, 3)), np.zeros(n, np.int64), np.zeros(n, np.float32)
    for k, box in enumerate(ndimage.find_objects(labels)):
        inside = np.nonzero(labels[box] == k + 1)                                  # 3 x (m,) offsets in the box
        w = weights[box][inside].astype(np.float64)                                 # (m,)
        offsets = np.stack(inside, axis=1) + [b.start for b in box]                 # (m, 3) voxel indices
        total = w.sum()
        centers[k] = (offsets * w[:, None]).sum(axis=0) / total if total > 0 else offsets.mean(axis=0)
        voxels[k], peak[k] = len(w), w.max()
    found = _components(centers, voxels, spacing_xyz, peak)
    return found.take(voxels >= min_voxels)


def _components(centers_irc: np.ndarray, voxels: np.ndarray, spacing_xyz, peak: np.ndarray) -> Components:
    """Components from centres and voxel counts: volume = voxels x voxel mm^3, diameter of the sphere of that volume."""
    voxel_mm3 = float(np.prod(np.asarray(spacing_xyz, dtype=np.float64)))
    volume = np.asarray(voxels, dtype=np.float64) * voxel_mm3
    return Components(np.asarray(centers_irc, np.float64).reshape(-1, 3), np.asarray(voxels, np.int64), volume,
                      np.cbrt(6 * volume / np.pi), np.asarray(peak, np.float32))
