"""`CtVolume`: one CT scan in Hounsfield units and its placement in the world."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from noduleflow.ct import geometry
from noduleflow.errors import ScanError

MAX_VOXELS = 2**30
"""The largest volume noduleflow reads or resamples to, in voxels (2 GiB as int16 HU).

Every reader checks a header's sizes against it, and `resample` its output shape, before anything
is allocated, so a header (or a --spacing) that claims an absurd size is refused with a message
instead of a MemoryError. The largest LUNA16 scan is about 512 x 512 x 800 voxels, a fifth of this,
and a 1024 x 1024 x 1000 ultra-high-resolution CT still fits."""
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 50.0
"""The voxel sizes a CT can have: micro-CT of a specimen reaches tens of micrometres, the thickest
clinical slices are about 10 mm. A value outside comes from a wrong header, a wrong unit
(metres read as mm) or a typo, and would make absurd array sizes downstream."""
_UNIT_ATOL = 1e-3
"""How far a direction column's length may be from 1 (headers store cosines with 6 digits or fewer)."""
_MIN_ABS_DET = 0.5
"""The smallest |det| of the direction matrix: 1 for a rotation; a gantry-tilted DICOM series keeps
its sheared slice axis exactly (|det| = cos(tilt), tilts are at most about 30 degrees)."""


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
            raise ValueError(
                f"CtVolume.hu must be int16 Hounsfield units, got {hu.dtype}; convert with np.clip(...).astype(np.int16)"
            )
        origin = np.asarray(self.origin_xyz, dtype=np.float64).reshape(3)
        spacing = np.asarray(self.spacing_xyz, dtype=np.float64).reshape(3)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(origin)):
            raise ValueError(f"CtVolume.origin_xyz must be finite millimetres, got {origin.tolist()}")
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"CtVolume.spacing_xyz must be positive millimetres, got {spacing.tolist()}")
        if not np.all(np.isfinite(direction)) or not abs(np.linalg.det(direction)) >= 1e-6:
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


def spacing_in_range(spacing_mm) -> bool:
    """True if every value is a finite voxel size from `MIN_SPACING_MM` to `MAX_SPACING_MM`."""
    a = np.asarray(spacing_mm, dtype=np.float64)
    return bool(np.all(np.isfinite(a)) and np.all(a >= MIN_SPACING_MM) and np.all(a <= MAX_SPACING_MM))


def check_voxel_count(shape, *, path, what: str) -> None:
    """ScanError naming `path` unless every size in `shape` is >= 1 and their product is at most `MAX_VOXELS`.

    shape: any sequence of Python or numpy integers; the product is taken in Python ints, so it
    cannot wrap around as an int64 product can.
    """
    sizes = [int(n) for n in shape]
    count = 1
    for n in sizes:
        count *= n
    if any(n < 1 for n in sizes):
        raise ScanError(
            f"{what} has a size below 1 ({' x '.join(map(str, sizes))})",
            path=path,
            fix="The header is damaged: export the scan again",
        )
    if count > MAX_VOXELS:
        raise ScanError(
            f"{what} is {' x '.join(map(str, sizes))} = {count} voxels, more than the {MAX_VOXELS} noduleflow reads",
            path=path,
            fix="The header is damaged, or the volume is not a CT scan: export the scan again",
        )


def checked_volume(hu: np.ndarray, origin_xyz, spacing_xyz, direction, series_uid: str, *, path) -> CtVolume:
    """The `CtVolume` a reader built, after the checks every reader shares, as a ScanError naming `path`:
    finite origin, finite spacing from `MIN_SPACING_MM` to `MAX_SPACING_MM`, and a direction matrix
    of unit columns with |det| >= 0.5 (see `_MIN_ABS_DET`)."""
    origin = np.asarray(origin_xyz, dtype=np.float64).reshape(3)
    spacing = np.asarray(spacing_xyz, dtype=np.float64).reshape(3)
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    fix = "Correct the scan's header (its geometry is damaged), or export the scan again"
    if not np.all(np.isfinite(origin)):
        raise ScanError(f"places the volume at a non-finite origin {origin.tolist()} mm", path=path, fix=fix)
    if not spacing_in_range(spacing):
        raise ScanError(
            f"has a voxel size of {spacing.tolist()} mm, outside {MIN_SPACING_MM} to {MAX_SPACING_MM} mm",
            path=path,
            fix=fix,
        )
    if (
        not np.all(np.isfinite(matrix))
        or np.any(np.abs(np.linalg.norm(matrix, axis=0) - 1) > _UNIT_ATOL)
        or abs(np.linalg.det(matrix)) < _MIN_ABS_DET
    ):
        raise ScanError(
            f"has a direction matrix {np.round(matrix, 6).tolist()} that is not a rotation", path=path, fix=fix
        )
    return CtVolume(hu, origin, spacing, matrix, series_uid=series_uid)
