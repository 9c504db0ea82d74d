"""Extra candidates for the nodules the U-Net's components miss: local maxima of its map below the threshold.

A small, faint or pleural nodule often gets a probability peak of 0.1-0.45 from the U-Net (docs/decisions.md,
2026-12-06): below the threshold that makes components, but a peak all the same. `probability_peaks` lists the
map's 26-neighbour local maxima between a low floor and the threshold that lie farther than a nodule radius
from every component (and from each other), highest first. Free: the map is already computed, and only the
voxels above the floor are visited. The Predictor ranks them after its components and the classifier scores
them like any candidate. Shapes: maps (I, R, C); centres (N, 3) voxel indices (I, R, C).
"""

from __future__ import annotations

import numpy as np

_NEIGHBOURS = np.array(
    [(i, r, c) for i in (-1, 0, 1) for r in (-1, 0, 1) for c in (-1, 0, 1) if (i, r, c) != (0, 0, 0)]
)


def probability_peaks(
    probs: np.ndarray,
    taken_irc: np.ndarray,
    spacing_irc,
    *,
    floor: float = 0.05,
    threshold: float = 0.5,
    exclude_mm: float = 5.0,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima (26-neighbours) of the (I, R, C) probability map with floor < p <= threshold, farther than
    `exclude_mm` from every (M, 3) `taken_irc` centre and from each other (the higher kept).

    Returns (N, 3) float centres (I, R, C) and (N,) their probabilities, highest first (at most `limit`).
    """
    idx = np.argwhere((probs > floor) & (probs <= threshold))  # (n, 3); a few hundred thousand at most
    if not len(idx):
        return np.zeros((0, 3)), np.zeros(0, np.float32)
    values = probs[tuple(idx.T)]
    peak = np.ones(len(idx), bool)
    upper = np.array(probs.shape) - 1
    for offset in _NEIGHBOURS:  # a 26-neighbour maximum at these voxels only, not a filter over the volume
        peak &= probs[tuple(np.clip(idx + offset, 0, upper).T)] <= values
    idx = idx[peak]
    values = probs[tuple(idx.T)].astype(np.float32)
    order = np.argsort(-values, kind="stable")
    keep = far_apart(idx[order].astype(np.float64), taken_irc, spacing_irc, exclude_mm, limit)
    return idx[order][keep].astype(np.float64), values[order][keep]


def far_apart(
    points_irc: np.ndarray, taken_irc: np.ndarray, spacing_irc, distance_mm: float, limit: int | None = None
) -> np.ndarray:
    """(N,) bool: each of the (N, 3) points (in priority order) farther than `distance_mm` from every (M, 3)
    taken point and from every earlier kept point."""
    spacing = np.asarray(spacing_irc, np.float64)
    taken = np.asarray(taken_irc, np.float64).reshape(-1, 3) * spacing  # (M + kept, 3) mm
    keep, kept = np.zeros(len(points_irc), bool), 0
    for i, p in enumerate(points_irc * spacing):
        if (((taken - p) ** 2).sum(1) <= distance_mm**2).any():
            continue
        keep[i], kept = True, kept + 1
        taken = np.vstack([taken, p])
        if kept == limit:
            break
    return keep
