"""A second candidate source: blob-shaped maxima of the lung field, for nodules the U-Net gives no candidate at all.

The U-Net's misses on the development scans are small (3-7 mm), faint or pleural nodules whose map never
rises anywhere near them; the classifier, shown a patch around one, often calls it a nodule all the same
(docs/decisions.md, 2026-12-07). So `lung_blobs` lists where a nodule could be, from the image alone: the
local maxima of the scale-normalised Laplacian of Gaussian, -sigma^2 * lap(G_sigma * HU) with the derivatives
in mm, taken over the scales `SIGMAS_MM` (nodules of about 3-9 mm), inside the lung mask, on tissue (HU above
`MIN_HU`, which keeps ground glass) and answering at least `MIN_RESPONSE`. A full-resolution scan gives a few
thousand; the Predictor has the classifier score them all (`pick_blobs` keeps the ones it calls nodules) and
ranks them below what both models agree on (`Predictor`'s `blob_weight`).

Computed on the lung's bounding box, on every second row and column where pixels are finer than
`FINE_PIXEL_MM` (a blob of sigma 1 mm still spans a few of those): float32, so memory stays a few times the
box's. Shapes: volumes (I, R, C); centres (N, 3) voxel indices (I, R, C).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from noduleflow.detect.peaks import far_apart

SIGMAS_MM = (1.0, 1.5, 2.2, 3.2)
"""Gaussian scales (mm): a solid sphere of diameter d answers most at sigma = d / (2 sqrt 3), so 3.5-11 mm."""
MIN_HU = -750.0
"""Blob centres below this HU are air or the faintest haze, not a nodule; ground glass (-700 to -300) passes."""
MIN_RESPONSE = 20.0
"""Least normalised LoG response (HU): below it a maximum is noise in the parenchyma."""
FINE_PIXEL_MM = 1.0
"""Pixels finer than this are read every second row and column (LUNA16's 0.6-0.9 mm become 1.2-1.8 mm)."""
MAX_BLOBS = 20_000
"""At most this many maxima a scan, strongest first: a full-resolution scan gives 3,000-9,000."""


def lung_blobs(
    hu: np.ndarray, lung: np.ndarray, spacing_irc, *, sigmas_mm=SIGMAS_MM, limit: int = MAX_BLOBS
) -> tuple[np.ndarray, np.ndarray]:
    """Blob maxima of the (I, R, C) HU volume inside the bool `lung` mask (module docstring).

    spacing_irc: voxel size in mm along I, R, C. Returns (N, 3) int64 centres (I, R, C) and (N,) float32
    responses, strongest first; none when the mask is empty.
    """
    boxes = ndimage.find_objects(np.asarray(lung, np.uint8))
    if not boxes or boxes[0] is None:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32)
    spacing = np.asarray(spacing_irc, np.float64)
    step = np.where((spacing < FINE_PIXEL_MM) & (np.arange(3) > 0), 2, 1)  # rows and columns only
    view = (boxes[0][0],) + tuple(slice(s.start, s.stop, int(k)) for s, k in zip(boxes[0][1:], step[1:], strict=True))
    image, inside = hu[view].astype(np.float32), lung[view]
    spacing = spacing * step
    best = np.full(image.shape, -np.inf, np.float32)
    for sigma in sigmas_mm:
        np.maximum(best, -(sigma**2) * _laplacian_mm(image, sigma, spacing), out=best)
    peaks = (best == ndimage.maximum_filter(best, size=3)) & inside & (image > MIN_HU) & (best > MIN_RESPONSE)
    points, response = np.argwhere(peaks), best[peaks]
    order = np.argsort(-response, kind="stable")[:limit]
    origin = np.array([s.start for s in boxes[0]], np.int64)
    return points[order] * step + origin, response[order]


def pick_blobs(
    centers_irc: np.ndarray,
    nodule: np.ndarray,
    taken_irc: np.ndarray,
    spacing_irc,
    *,
    min_probability: float = 0.5,
    clear_mm: float = 3.0,
    apart_mm: float = 4.0,
) -> np.ndarray:
    """Indices of the (N, 3) blob centres to add as candidates, most probable first: P(nodule) (N,) above
    `min_probability`, farther than `clear_mm` from every (M, 3) `taken_irc` candidate (that nodule has its
    mark already) and `apart_mm` from every more probable blob kept (one mark a nodule)."""
    chosen = np.flatnonzero(np.asarray(nodule) > min_probability)
    chosen = chosen[np.argsort(-nodule[chosen], kind="stable")]
    points = np.asarray(centers_irc, np.float64)[chosen]
    taken = np.asarray(taken_irc, np.float64).reshape(-1, 3)
    if len(taken) and len(points):
        gap = np.sqrt((((points[:, None] - taken[None]) * np.asarray(spacing_irc)) ** 2).sum(-1)).min(1)
        chosen, points = chosen[gap > clear_mm], points[gap > clear_mm]
    return chosen[far_apart(points, np.zeros((0, 3)), spacing_irc, apart_mm)]


def _laplacian_mm(image: np.ndarray, sigma_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """(I, R, C) float32 Laplacian in HU / mm^2 of the image smoothed by a Gaussian of `sigma_mm` (per-axis voxels)."""
    sigma = sigma_mm / spacing_mm
    out = np.zeros(image.shape, np.float32)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 2
        out += ndimage.gaussian_filter(image, sigma, order=order, mode="nearest") / np.float32(spacing_mm[axis] ** 2)
    return out
