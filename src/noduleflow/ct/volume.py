"""`CtVolume`: one CT scan in Hounsfield units and its placement in the world."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from noduleflow.ct import geometry
from noduleflow.ct.hu import count_clipped, to_hu_int16, warn_if_not_ct
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
_FROM_ARRAY, _FROM_SITK = "CtVolume.from_array(hu)", "CtVolume.from_sitk(image)"  # what errors name as the input
_SERIES_UID_TAG = "0020|000e"
_HEADER_FIX = "Correct the scan's header (its geometry is damaged), or export the scan again"


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

    @classmethod
    def from_array(
        cls,
        hu: ArrayLike,
        *,
        spacing_xyz: ArrayLike,
        origin_xyz: ArrayLike = (0.0, 0.0, 0.0),
        direction: ArrayLike | None = None,
        series_uid: str | None = None,
    ) -> CtVolume:
        """A volume from an (I, R, C) = (z, y, x) array of Hounsfield units, such as another library loaded.

        hu: any integer or float dtype, converted as the readers convert (`ct.hu.to_hu_int16`): floats
        rounded to the nearest integer (halves to even), NaN to air (-1024), then every value clipped to
        -32768..32767; an int16 array is kept as it is, without a copy. spacing_xyz: mm along C, R, I
        (X, Y, Z order). origin_xyz: mm, the world position of voxel (0, 0, 0). direction: (3, 3), columns
        the world directions of the C, R and I axes (default the identity). series_uid: None -> "".
        The geometry passes the readers' checks (`checked_volume`), so a spacing in metres or a direction
        that is no rotation is refused here, as a ScanError, instead of misplacing every finding later.
        """
        return _from_values(
            hu, spacing_xyz, origin_xyz, np.eye(3) if direction is None else direction, series_uid, _FROM_ARRAY
        )

    @classmethod
    def from_sitk(cls, image, *, series_uid: str | None = None) -> CtVolume:
        """A volume from a 3D, one-component SimpleITK image, its geometry carried over unchanged.

        SimpleITK's array is (z, y, x) = (I, R, C), its spacing and origin are X, Y, Z, and its direction
        matrix means what ours does (columns = the world directions of the index axes x, y, z = C, R, I),
        so every voxel keeps its world position. Values and checks as in `from_array`. series_uid: None ->
        the image's DICOM Series Instance UID (0020|000e, which SimpleITK's DICOM reader sets), else "".
        SimpleITK is imported only here: noduleflow's own readers do without it.
        """
        import SimpleITK as sitk

        dims, parts = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
        if dims != 3 or parts != 1:
            raise ScanError(
                f"got a {dims}D image of {parts} component(s) per voxel, not a 3D scalar image",
                path=_FROM_SITK,
                fix="Pass one 3D CT image (extract one component or one time point first)",
            )
        if series_uid is None and image.HasMetaDataKey(_SERIES_UID_TAG):
            series_uid = image.GetMetaData(_SERIES_UID_TAG).strip()
        hu = sitk.GetArrayViewFromImage(image)  # (z, y, x), a view of the image's memory, which may be freed
        hu = hu.copy() if hu.dtype == np.int16 else hu  # other dtypes: to_hu_int16 makes the new array
        direction = np.reshape(image.GetDirection(), (3, 3))
        return _from_values(hu, image.GetSpacing(), image.GetOrigin(), direction, series_uid, _FROM_SITK)


def _from_values(hu, spacing_xyz, origin_xyz, direction, series_uid: str | None, label: str) -> CtVolume:
    """`CtVolume.from_array`, its errors and warnings naming `label` as the input."""
    a = np.asarray(hu)
    if a.ndim != 3 or a.size == 0 or a.size > MAX_VOXELS:
        raise ScanError(
            f"got an array of shape {a.shape}, not a 3D (I, R, C) volume of 1 to {MAX_VOXELS} voxels",
            path=label,
            fix="Pass one scan as a 3D array ordered slice, row, column (z, y, x)",
        )
    try:
        values = to_hu_int16(a)
    except ValueError as err:
        raise ScanError(str(err), path=label, fix="Pass Hounsfield units as an integer or float array") from None
    warn_if_not_ct(values, label, clipped=count_clipped(a))
    fix = "Pass spacing_xyz and origin_xyz in millimetres, ordered X, Y, Z, and a direction matrix of unit columns"
    return checked_volume(values, origin_xyz, spacing_xyz, direction, series_uid or "", path=label, fix=fix)


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


def checked_volume(
    hu: np.ndarray, origin_xyz, spacing_xyz, direction, series_uid: str, *, path, fix: str = _HEADER_FIX
) -> CtVolume:
    """The `CtVolume` a reader built, after the checks every reader shares, as a ScanError naming `path`
    (and `fix`): finite origin, finite spacing from `MIN_SPACING_MM` to `MAX_SPACING_MM`, and a direction
    matrix of unit columns with |det| >= 0.5 (see `_MIN_ABS_DET`)."""
    origin = _floats(origin_xyz, 3, "origin", path=path, fix=fix)
    spacing = _floats(spacing_xyz, 3, "spacing", path=path, fix=fix)
    matrix = _floats(direction, 9, "direction matrix", path=path, fix=fix).reshape(3, 3)
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


def _floats(values, count: int, name: str, *, path, fix: str) -> np.ndarray:
    """`values` as (count,) float64, or a ScanError naming `path` when they are not `count` numbers."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.size != count:
        raise ScanError(f"has a {name} of {values!r}, not {count} numbers", path=path, fix=fix)
    return a.reshape(count)
