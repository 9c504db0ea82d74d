"""NIfTI files (`.nii`, `.nii.gz`) through nibabel, placed in LPS world millimetres like ITK.

NIfTI's affine maps voxel (x, y, z) = (C, R, I) to RAS world coordinates (+X to the patient's
right, +Y anterior, +Z superior); noduleflow, ITK and the LUNA16 CSVs use LPS (+X left, +Y
posterior), so the first two world axes change sign on the way in and out:
``lps = diag(-1, -1, 1) @ ras``.

A file may carry two affines (sform and qform). We pick the one ITK 5.4 picks, so a scan gets the
same world coordinates here and in SimpleITK: the sform if its code is "scanner" (1) or if it is
the only one set, else the qform if set, else pixdim scaling along the LPS axes with origin 0
(NIfTI "method 1", which states no orientation; ITK takes it as LPS).
Unlike ITK we keep a sheared sform exactly instead of falling back to the qform.
NIfTI stores affines as float32, so geometry survives a write/read round trip to ~1e-6 relative.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from noduleflow.ct.hu import read_hu_slices, warn_if_not_ct
from noduleflow.ct.volume import CtVolume, check_voxel_count, checked_volume
from noduleflow.errors import ScanError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_XFORM_SCANNER = 1
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}
"""xyz_units -> millimetres, as ITK converts them ('unknown' is taken as mm, as everyone does)."""
_AFFINE_FIX = "Set a valid sform or qform, e.g. with nibabel"
_SCALING_FIX = "Set scl_slope to 1 and scl_inter to 0, or to the scaling of its values"
_DAMAGED_FIX = "The file is damaged or truncated: copy or download it again"


def read_nifti(path: str | Path) -> CtVolume:
    """Read a `.nii` / `.nii.gz` into a `CtVolume` (int16 HU, (I, R, C)); the series uid is the file stem.

    The header is checked before any pixel is read (its sizes against `MAX_VOXELS` and, for an
    uncompressed file, against the bytes on disk); pixels are then read one slice at a time,
    scl_slope / scl_inter applied in float32, rounded and clipped to int16 HU, so memory is the
    int16 result plus one slice whatever the stored type.
    """
    path = Path(path)
    compressed = path.name.lower().endswith(".gz")
    header = _read_header(path, compressed)
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ScanError(
            f"is a {len(shape)}D image of shape {shape}; a CT volume is 3D",
            path=path,
            fix="Pass a 3D scan (split a 4D series into one file per volume)",
        )
    check_voxel_count(shape[:3], path=path, what="the image size in its header (dim)")
    try:
        dtype = header.get_data_dtype()
    except (HeaderDataError, KeyError) as err:
        raise ScanError(
            f"has an unknown datatype code ({err})", path=path, fix="Convert it to an integer or float NIfTI image"
        ) from None
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.itemsize > 8:
        raise ScanError(
            f"holds {dtype} voxels (complex, RGB or another non-scalar type), not CT values",
            path=path,
            fix="Convert it to a single-channel integer or float image",
        )
    try:
        slope, inter = header.get_slope_inter()
    except HeaderDataError as err:  # e.g. an infinite scl_slope
        raise ScanError(f"has an unusable scaling ({err})", path=path, fix=_SCALING_FIX) from None
    slope, inter = 1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter)
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise ScanError(
            f"has a non-finite scaling scl_slope = {slope}, scl_inter = {inter}",
            path=path,
            fix="Set scl_slope to 1 and scl_inter to 0, or to the scaling of its values",
        )
    try:
        with np.errstate(invalid="ignore", over="ignore"):  # a NaN or inf header is reported below, not warned about
            lps = _RAS_TO_LPS @ _world_affine(header)
    except ValueError as err:  # nibabel: quatern_b/c/d that are not part of a unit quaternion
        raise ScanError(f"has an invalid qform ({err})", path=path, fix=_AFFINE_FIX) from None
    if not np.all(np.isfinite(lps)):
        raise ScanError("has a non-finite affine (sform, qform or pixdim)", path=path, fix=_AFFINE_FIX)
    scaled = lps[:3, :3]
    spacing = np.linalg.norm(scaled, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(scaled)) < 1e-9 * max(float(np.prod(spacing)), 1e-300):
        raise ScanError(
            f"has a degenerate affine {lps[:3].tolist()}",
            path=path,
            fix="Set a valid sform or qform, e.g. with nibabel",
        )
    offset = float(header["vox_offset"])
    if not (math.isfinite(offset) and header.sizeof_hdr <= offset < 2**40):
        raise ScanError(f"has vox_offset = {offset}, which does not point past its header", path=path, fix=_DAMAGED_FIX)
    hu, clipped = _read_voxels(path, compressed, int(header.get_data_offset()), dtype, shape[:3][::-1], slope, inter)
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    volume = checked_volume(hu, lps[:3, 3], spacing, scaled / spacing, stem, path=path)
    warn_if_not_ct(volume.hu, path, clipped=clipped)
    return volume


def _read_header(path: Path, compressed: bool):
    """The file's NIfTI-1 or NIfTI-2 header (with its extensions), read by nibabel's header classes.

    nibabel's `load` is not used: it finds files by lower-case suffixes only (it looks for
    'scan.nii.Gz' when given 'Scan.Nii.Gz') and reads voxels itself; noduleflow reads them below.
    """
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            size = f.read(4)
            f.seek(0)
            if len(size) < 4 or {int.from_bytes(size, "little"), int.from_bytes(size, "big")}.isdisjoint({348, 540}):
                raise ScanError(
                    "is not a readable NIfTI file: its first 4 bytes are not a NIfTI header size (348 or 540)",
                    path=path,
                    fix="Check that the file is complete and really NIfTI",
                )
            nifti1 = 348 in (int.from_bytes(size, "little"), int.from_bytes(size, "big"))
            header = (nib.Nifti1Header if nifti1 else nib.Nifti2Header).from_fileobj(f, check=True)
    except (HeaderDataError, OSError, EOFError, ValueError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # permissions, a vanished file: read_volume says so
        raise ScanError(
            f"is not a readable NIfTI file ({str(err)[:200]})",
            path=path,
            fix="Check that the file is complete and really NIfTI",
        ) from None
    if header["magic"].item() not in (b"n+1", b"n+2"):
        raise ScanError(
            f"has the NIfTI magic {header['magic'].item()!r}, not that of a single .nii file ('n+1' or 'n+2')",
            path=path,
            fix="Convert the .hdr/.img pair (or Analyze file) to .nii.gz, e.g. with nibabel or SimpleITK",
        )
    return header


def _read_voxels(
    path: Path,
    compressed: bool,
    offset: int,
    dtype: np.dtype,
    shape_irc: tuple[int, int, int],
    slope: float,
    inter: float,
):
    """(hu (I, R, C) int16, clipped count). NIfTI stores x (C) fastest, then y (R), then z (I), so each
    z slice is one contiguous (R, C) block."""
    expected = math.prod(shape_irc) * dtype.itemsize
    voxels = f"its header's {' x '.join(map(str, shape_irc[::-1]))} {dtype} voxels need {expected}"
    if not compressed and path.stat().st_size - offset != expected:
        raise ScanError(
            f"holds {path.stat().st_size - offset} bytes of voxels, but {voxels}", path=path, fix=_DAMAGED_FIX
        )
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            f.seek(offset)
            hu, clipped, read = read_hu_slices(f, dtype, shape_irc, slope=slope, inter=inter)
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # permissions, a vanished file: read_volume says so
        raise ScanError(f"has voxel data that cannot be read ({err})", path=path, fix=_DAMAGED_FIX) from None
    if read != expected or extra:
        size = f"{read} bytes" if read < expected else "more bytes"
        raise ScanError(f"holds {size} of voxels, but {voxels}", path=path, fix=_DAMAGED_FIX)
    return hu, clipped


def write_nifti(volume: CtVolume, path: str | Path) -> Path:
    """Write a `CtVolume` as int16 NIfTI-1 (gzip-compressed for `.nii.gz`), sform and qform both "scanner"."""
    path = Path(path)
    lps = np.eye(4)
    lps[:3, :3] = volume.direction * volume.spacing_xyz
    lps[:3, 3] = volume.origin_xyz
    ras = _RAS_TO_LPS @ lps  # the flip is its own inverse
    image = nib.Nifti1Image(volume.hu.T, ras)  # (C, R, I) = NIfTI's (x, y, z)
    image.header.set_xyzt_units("mm")
    image.set_qform(ras, code=_XFORM_SCANNER)
    image.set_sform(ras, code=_XFORM_SCANNER)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    if path.name.endswith(suffix):
        nib.save(image, path)
    else:  # nibabel picks the format by a lower-case suffix only ("Scan.Nii.Gz" would not be compressed)
        lower = path.with_name(f".{path.name[: -len(suffix)]}.tmp{suffix}")
        nib.save(image, lower)
        lower.replace(path)
    return path


def _world_affine(header) -> np.ndarray:
    """The (4, 4) voxel -> RAS mm affine that ITK would use for this header (see module doc), with
    xyz_units converted to millimetres."""
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if scode == _XFORM_SCANNER or (scode > 0 and qcode == 0):
        affine = np.asarray(sform, dtype=np.float64)
    elif qcode > 0:
        affine = np.asarray(qform, dtype=np.float64)
    else:
        affine = _RAS_TO_LPS @ np.diag([*map(float, header.get_zooms()[:3]), 1.0])
    affine = affine.copy()
    affine[:3] *= _MM_PER_UNIT.get(header.get_xyzt_units()[0], 1.0)
    return affine
