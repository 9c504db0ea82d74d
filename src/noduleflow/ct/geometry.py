"""World millimetres (X, Y, Z) <-> voxel indices (I, R, C) for any direction matrix.

A voxel at index (i, r, c) sits at ``xyz = origin + direction @ (spacing * [c, r, i])``. The
column axis C runs along world X for an identity direction, rows along Y, slices along Z, which is
how SimpleITK, ITK and the LUNA16 CSVs place voxels. All functions take one point of shape (3,)
or many of shape (N, 3) and return the same shape.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _as_points(points: ArrayLike) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64)
    if a.shape[-1] != 3 or a.ndim > 2:
        raise ValueError(f"expected points of shape (3,) or (N, 3), got {a.shape}")
    return a


def irc_to_xyz(irc: ArrayLike, origin_xyz: ArrayLike, spacing_xyz: ArrayLike, direction: ArrayLike) -> np.ndarray:
    """Voxel indices (I, R, C), possibly fractional, -> world mm (X, Y, Z)."""
    cri = _as_points(irc)[..., ::-1]
    scaled = cri * np.asarray(spacing_xyz, dtype=np.float64)
    return np.asarray(origin_xyz, dtype=np.float64) + scaled @ np.asarray(direction, dtype=np.float64).T


def xyz_to_irc_float(xyz: ArrayLike, origin_xyz: ArrayLike, spacing_xyz: ArrayLike, direction: ArrayLike) -> np.ndarray:
    """World mm (X, Y, Z) -> fractional voxel indices (I, R, C); the exact inverse of `irc_to_xyz`."""
    offset = _as_points(xyz) - np.asarray(origin_xyz, dtype=np.float64)
    # solve direction @ scaled = offset for every point at once; works for oblique matrices too
    scaled = np.linalg.solve(np.asarray(direction, dtype=np.float64), offset.T).T
    cri = scaled / np.asarray(spacing_xyz, dtype=np.float64)
    return cri[..., ::-1]


def xyz_to_irc(xyz: ArrayLike, origin_xyz: ArrayLike, spacing_xyz: ArrayLike, direction: ArrayLike) -> np.ndarray:
    """World mm (X, Y, Z) -> the nearest voxel index (I, R, C) as int64.

    Halves round up (floor(x + 0.5)), as ITK's TransformPhysicalPointToIndex does, so both give
    the same voxel for every point.
    """
    return np.floor(xyz_to_irc_float(xyz, origin_xyz, spacing_xyz, direction) + 0.5).astype(np.int64)
