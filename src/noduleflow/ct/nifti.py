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

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from noduleflow.ct.hu import to_hu_int16
from noduleflow.ct.volume import CtVolume
from noduleflow.errors import ScanError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_XFORM_SCANNER = 1


def read_nifti(path: str | Path) -> CtVolume:
    """Read a `.nii` / `.nii.gz` into a `CtVolume` (int16 HU, (I, R, C)); the series uid is the file stem.

    scl_slope / scl_inter are applied, then values are rounded and clipped to int16 HU.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except (ImageFileError, OSError, EOFError, ValueError) as err:
        raise ScanError(f"is not a readable NIfTI file ({err})", path=path, fix="Check that the file is complete and really NIfTI") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"is a {type(image).__name__}, not a NIfTI image", path=path, fix="Convert it to .nii.gz")
    shape = image.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ScanError(f"is a {len(shape)}D image of shape {shape}; a CT volume is 3D", path=path,
                        fix="Pass a 3D scan (split a 4D series into one file per volume)")
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise ScanError(f"has pixel data that cannot be read ({err})", path=path, fix="The file is damaged or truncated: copy or download it again") from None
    # nibabel gives (x, y, z) = (C, R, I) in Fortran order, so the transpose is C-contiguous
    hu = np.ascontiguousarray(to_hu_int16(data.reshape(shape[:3]).T))
    lps = _RAS_TO_LPS @ _world_affine(image.header)
    scaled = lps[:3, :3]
    spacing = np.linalg.norm(scaled, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(scaled)) < 1e-9:
        raise ScanError(f"has a degenerate affine {lps[:3].tolist()}", path=path, fix="Set a valid sform or qform, e.g. with nibabel")
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    return CtVolume(hu, lps[:3, 3], spacing, scaled / spacing, series_uid=stem)


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
    """The (4, 4) voxel -> RAS mm affine that ITK would use for this header (see module doc)."""
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if scode == _XFORM_SCANNER or (scode > 0 and qcode == 0):
        return np.asarray(sform, dtype=np.float64)
    if qcode > 0:
        return np.asarray(qform, dtype=np.float64)
    return _RAS_TO_LPS @ np.diag([*map(float, header.get_zooms()[:3]), 1.0])
