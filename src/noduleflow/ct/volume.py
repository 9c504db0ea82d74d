"""`CtVolume`: one CT scan in Hounsfield units and its placement in the world."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from noduleflow.ct import geometry


@dataclass(frozen=True, eq=False)
class CtVolume:
    """A CT scan.

    hu:          (I, R, C) = (slice, row, column) int16 array of Hounsfield units.
    origin_xyz:  (3,) world position in mm of voxel (0, 0, 0), ordered X, Y, Z.
    spacing_xyz: (3,) voxel size in mm along the C, R and I axes (X, Y, Z order, as in .mhd files).
    direction:   (3, 3) matrix whose columns are the world directions of the C, R and I axes.
    series_uid:  the scan's identifier (the LUNA16 seriesuid, or the file name without suffix).
    """

    hu: np.ndarray
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray
    series_uid: str = ""

    def __post_init__(self) -> None:
        hu = np.asarray(self.hu)
        if hu.ndim != 3:
            raise ValueError(f"CtVolume.hu must be 3D (I, R, C), got shape {hu.shape}")
        if hu.dtype != np.int16:
            raise ValueError(f"CtVolume.hu must be int16 Hounsfield units, got {hu.dtype}; convert with np.clip(...).astype(np.int16)")
        origin = np.asarray(self.origin_xyz, dtype=np.float64).reshape(3)
        spacing = np.asarray(self.spacing_xyz, dtype=np.float64).reshape(3)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"CtVolume.spacing_xyz must be positive millimetres, got {spacing.tolist()}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise ValueError(f"CtVolume.direction must be an invertible 3x3 matrix, got {direction.tolist()}")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "origin_xyz", origin)
        object.__setattr__(self, "spacing_xyz", spacing)
        object.__setattr__(self, "direction", direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(I, R, C) voxel counts."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_irc(self) -> np.ndarray:
        """Voxel size in mm along I, R, C (the array's axis order)."""
        return self.spacing_xyz[::-1].copy()

    def irc_to_xyz(self, irc: ArrayLike) -> np.ndarray:
        """Voxel indices (I, R, C), (3,) or (N, 3), possibly fractional -> world mm (X, Y, Z)."""
        return geometry.irc_to_xyz(irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def xyz_to_irc(self, xyz: ArrayLike, *, rounded: bool = True) -> np.ndarray:
        """World mm (X, Y, Z), (3,) or (N, 3) -> voxel indices (I, R, C): nearest int64, or float."""
        fn = geometry.xyz_to_irc if rounded else geometry.xyz_to_irc_float
        return fn(xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def contains_irc(self, irc: ArrayLike) -> np.ndarray:
        """True for each (I, R, C) index that lies inside the array."""
        a = np.asarray(irc)
        return np.all((a >= 0) & (a < np.asarray(self.shape)), axis=-1)
