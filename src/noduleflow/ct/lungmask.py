"""Lung fields of a chest CT by thresholding and morphology (scipy.ndimage only, no model).

Steps, each vectorised over the whole volume:
1. air = HU below `threshold_hu` (lung parenchyma is about -850 HU, soft tissue about 0);
2. drop air connected to a slice's edge: in each axial slice, the air around the body (and under
   the table) reaches the edge, the lungs never do. Done per slice, not in 3D, because in 3D the
   trachea can join the lungs to the outside air through the nose and mouth of a scan that
   includes the head;
3. keep the large 3D components (at most two, the left and right lung, or one if the trachea joins
   them), each at least `min_lung_ml` and at least a fifth of the largest, which drops bowel
   and stomach gas;
4. close in plane with a square of half-width `closing_mm`, then fill holes in each slice, so
   vessels and nodules inside the lungs, including juxta-pleural nodules that bulge in from
   the chest wall (up to about `closing_mm` in radius), end up inside the mask. Only holes up to
   the area of a `max_hole_mm` disk are filled: near the lung bases an axial slice can show the
   lung as a ring around the diaphragm's dome (liver, stomach), which must stay outside.

The closing is a separable max/min filter (cost independent of its size) on each lung's bounding
box, one lung at a time so that it does not bridge the mediastinum between them. Where the
airways join both lungs into one component it may take in some mediastinum where the lungs come
within 2 * `closing_mm` of each other, which is harmless for finding candidates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from noduleflow.ct.volume import MIN_SPACING_MM, CtVolume

_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
"""4-connectivity within an axial slice, none across slices: makes 3D scipy calls act per slice."""
_SECOND_LUNG_FRACTION = 0.2


def lung_mask(
    volume: CtVolume,
    *,
    threshold_hu: int = -400,
    closing_mm: float = 10.0,
    min_lung_ml: float = 10.0,
    max_hole_mm: float = 50.0,
    step: int = 1,
) -> np.ndarray:
    """(I, R, C) bool mask of the lungs of `volume`; all False if no lung is found (the caller decides).

    threshold_hu: voxels below it are air or lung.
    closing_mm: half-width in mm of the in-plane closing; nodules on the lung wall up to about
        this radius are kept inside the mask.
    min_lung_ml: air components smaller than this (in millilitres) are not lungs.
    max_hole_mm: in-slice holes up to the area of a disk of this diameter are filled (nodules
        and masses up to this size surrounded by lung).
    step: work on every `step`-th row and column, then repeat each result voxel over a step x step
        square: about step**2 times faster, with the mask's edge off by less than `step` voxels
        (what `detect` uses: it only needs to know where lung is, to a few voxels).
    """
    if step > 1:
        coarse = CtVolume(
            np.ascontiguousarray(volume.hu[:, ::step, ::step]),
            volume.origin_xyz,
            volume.spacing_xyz * [step, step, 1],
            volume.direction,
            volume.series_uid,
        )
        small = lung_mask(
            coarse, threshold_hu=threshold_hu, closing_mm=closing_mm, min_lung_ml=min_lung_ml, max_hole_mm=max_hole_mm
        )
        _, n_r, n_c = volume.shape
        return np.repeat(np.repeat(small, step, axis=1), step, axis=2)[:, :n_r, :n_c]
    air = volume.hu < threshold_hu
    # the voxel sizes are floored at MIN_SPACING_MM: a CtVolume only promises positive spacing, and a
    # product of three tiny ones rounds to 0 mm^3 (division by zero) or a closing radius beyond int range
    spacing_irc = np.maximum(volume.spacing_irc, MIN_SPACING_MM)
    min_voxels = min_lung_ml * 1000.0 / float(np.prod(spacing_irc))
    labels, lungs = _lung_components(_enclosed_in_plane(air), min_voxels=min_voxels)
    radius_rc = np.minimum(np.maximum(1, np.round(closing_mm / spacing_irc[1:])), volume.shape[1:]).astype(int)
    max_hole_voxels = np.pi * (max_hole_mm / 2) ** 2 / float(np.prod(spacing_irc[1:]))
    mask = np.zeros(volume.shape, dtype=bool)
    for label in lungs:  # each lung on its own, so the closing does not bridge the mediastinum
        lung = labels == label
        box = _bounding_box(lung)
        mask[box] |= _close_and_fill(lung[box], radius_rc, max_hole_voxels)
    return mask


def _enclosed_in_plane(mask: np.ndarray, max_voxels: float = np.inf) -> np.ndarray:
    """The voxels of `mask` whose in-slice 4-connected component does not touch the slice's edge
    and has at most `max_voxels` voxels.

    mask: (I, R, C) bool.
    """
    labels, count = ndimage.label(mask, structure=_IN_PLANE)
    edge = np.concatenate([labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]], axis=None)
    keep = np.ones(count + 1, dtype=bool) if np.isinf(max_voxels) else np.bincount(labels.ravel()) <= max_voxels
    keep[0] = False
    keep[edge] = False
    return keep[labels]


def _lung_components(mask: np.ndarray, min_voxels: float) -> tuple[np.ndarray, list[int]]:
    """6-connected components of `mask` (int32 labels, (I, R, C)) and the labels of the (at most two)
    largest that pass the size rules: the lungs."""
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels[mask], minlength=count + 1)  # counting only the mask's voxels is faster
    largest = [int(label) for label in np.argsort(sizes)[::-1][:2] if label > 0]
    floor = max(min_voxels, _SECOND_LUNG_FRACTION * sizes[largest[0]]) if largest else 0
    return labels, [label for label in largest if sizes[label] >= floor]


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest (I, R, C) box holding every True voxel of a non-empty mask."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _close_and_fill(lungs: np.ndarray, radius_rc: np.ndarray, max_hole_voxels: float) -> np.ndarray:
    """In-plane square closing with half-widths `radius_rc` (voxels along R, C), then per-slice
    filling of holes up to `max_hole_voxels` voxels.

    lungs: (I, R, C) bool. The array is padded by the radius so the filters see empty space, not
    the array's edge, around the lungs.
    """
    rr, rc = (int(r) for r in radius_rc)
    padded = np.pad(lungs, ((0, 0), (rr, rr), (rc, rc))).view(np.uint8)
    closed = ndimage.maximum_filter1d(padded, 2 * rr + 1, axis=1, mode="constant")
    closed = ndimage.maximum_filter1d(closed, 2 * rc + 1, axis=2, mode="constant")
    closed = ndimage.minimum_filter1d(closed, 2 * rr + 1, axis=1, mode="constant")
    closed = ndimage.minimum_filter1d(closed, 2 * rc + 1, axis=2, mode="constant")
    closed = closed[:, rr : closed.shape[1] - rr, rc : closed.shape[2] - rc].astype(bool)
    return closed | _enclosed_in_plane(~closed, max_hole_voxels)
