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
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from noduleflow.ct.hu import read_hu_slices, warn_if_not_ct
from noduleflow.ct.volume import CtVolume, check_voxel_count, checked_volume
from noduleflow.errors import ScanError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_XFORM_SCANNER = 1
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}
"""xyz_units -> millimetres, as ITK converts them ('unknown' is taken as mm, as everyone does)."""
_DAMAGED_FIX = "The file is damaged or truncated: copy or download it again"


def read_nifti(path: str | Path) -> CtVolume:
    """Read a `.nii` / `.nii.gz` into a `CtVolume` (int16 HU, (I, R, C)); the series uid is the file stem.

    The header is checked before any pixel is read (its sizes against `MAX_VOXELS` and, for an
    uncompressed file, against the bytes on disk); pixels are then read one slice at a time,
    scl_slope / scl_inter applied in float32, rounded and clipped to int16 HU, so memory is the
    int16 result plus one slice whatever the stored type.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error) as err:
        raise ScanError(f"is not a readable NIfTI file ({str(err)[:200]})", path=path,
                        fix="Check that the file is complete and really NIfTI") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"is a {type(image).__name__}, not a NIfTI image", path=path, fix="Convert it to .nii.gz")
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ScanError(f"is a {len(shape)}D image of shape {shape}; a CT volume is 3D", path=path,
                        fix="Pass a 3D scan (split a 4D series into one file per volume)")
    check_voxel_count(shape[:3], path=path, what="the image size in its header (dim)")
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.itemsize > 8:
        raise ScanError(f"holds {dtype} voxels (complex, RGB or another non-scalar type), not CT values", path=path,
                        fix="Convert it to a single-channel integer or float image")
    slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise ScanError(f"has a non-finite scaling scl_slope = {slope}, scl_inter = {inter}", path=path,
                        fix="Set scl_slope to 1 and scl_inter to 0, or to the scaling of its values")
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN or inf header is reported below, not warned about
        lps = _RAS_TO_LPS @ _world_affine(header)
    if not np.all(np.isfinite(lps)):
        raise ScanError("has a non-finite affine (sform, qform or pixdim)", path=path, fix="Set a valid sform or qform, e.g. with nibabel")
    scaled = lps[:3, :3]
    spacing = np.linalg.norm(scaled, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(scaled)) < 1e-9 * max(float(np.prod(spacing)), 1e-300):
        raise ScanError(f"has a degenerate affine {lps[:3].tolist()}", path=path, fix="Set a valid sform or qform, e.g. with nibabel")
    hu, clipped = _read_voxels(path, image, dtype, shape[:3][::-1], slope, inter)
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    volume = checked_volume(hu, lps[:3, 3], spacing, scaled / spacing, stem, path=path)
    warn_if_not_ct(volume.hu, path, clipped=clipped)
    return volume


def _read_voxels(path: Path, image, dtype: np.dtype, shape_irc: tuple[int, int, int], slope: float, inter: float):
    """(hu (I, R, C) int16, clipped count). NIfTI stores x (C) fastest, then y (R), then z (I), so each
    z slice is one contiguous (R, C) block."""
    offset = int(image.dataobj.offset)
    expected = math.prod(shape_irc) * dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    if not compressed and path.stat().st_size - offset != expected:
        raise ScanError(f"holds {path.stat().st_size - offset} bytes of voxels, but its header's "
                        f"{' x '.join(map(str, shape_irc[::-1]))} {dtype} voxels need {expected}", path=path, fix=_DAMAGED_FIX)
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            f.seek(offset)
            hu, clipped, read = read_hu_slices(f, dtype, shape_irc, slope=slope, inter=inter)
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as err:
        raise ScanError(f"has voxel data that cannot be read ({err})", path=path, fix=_DAMAGED_FIX) from None
    if read != expected or extra:
        size = f"{read} bytes" if read < expected else "more bytes"
        raise ScanError(f"holds {size} of voxels, but its header's {' x '.join(map(str, shape_irc[::-1]))} {dtype} voxels need {expected}",
                        path=path, fix=_DAMAGED_FIX)
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
    nib.save(image, path)
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
