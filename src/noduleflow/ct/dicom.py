"""DICOM CT series: one folder of single-frame slice files -> one `CtVolume`, through pydicom.

DICOM already uses LPS world millimetres. Per slice, ImageOrientationPatient holds the world
directions of the C axis (first triplet, along a row) and of the R axis (second triplet, down a
column); ImagePositionPatient is the world position of the slice's first voxel; PixelSpacing is
(between rows, between columns) = (R, C) mm. File names and InstanceNumber say nothing reliable
about order, so slices are sorted by their position projected on the slice normal (C x R
directions), as ITK/GDCM do. The slice axis is the step between consecutive positions: its length
is the spacing along I and its direction the third direction column (the normal, unless the
gantry was tilted, in which case the sheared geometry is kept exactly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from noduleflow.ct.hu import to_hu_int16
from noduleflow.ct.volume import CtVolume
from noduleflow.errors import ScanError

_REQUIRED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_GEOMETRY_ATOL = 1e-4
"""Orientation cosines and pixel spacings equal to this tolerance count as the same."""
_GAP_RTOL = 0.1
"""A slice may sit this fraction of the slice spacing off the evenly spaced line; a missing slice
moves some slice by at least half a spacing."""
_RAW_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_ONE_SERIES_FIX = "Move each series into its own folder and read one folder at a time"


def read_dicom_series(folder: str | Path) -> CtVolume:
    """Read every DICOM image file in `folder` (not its subfolders) as one (I, R, C) int16 HU volume.

    Pixels become HU with each slice's RescaleSlope and RescaleIntercept. Files that are not
    DICOM, or DICOM without pixels (DICOMDIR, reports), are skipped. The series uid is the
    SeriesInstanceUID (the folder's name if the files have none).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ScanError("is an empty folder, not a DICOM series", path=folder, fix="Point at the folder that holds the series' slice files")
    slices = [(f, ds) for f in files if (ds := _read_slice(f)) is not None]
    if not slices:
        raise ScanError(f"holds {len(files)} files but no DICOM image file", path=folder,
                        fix="Point at the folder that holds the series' slice files, or pass one scan file (.mhd, .mha, .nii, .nii.gz)")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices})
    if len(series) > 1:
        raise ScanError(f"mixes {len(series)} DICOM series: {', '.join(series)}", path=folder, fix=_ONE_SERIES_FIX)
    for f, ds in slices:
        missing = [tag for tag in _REQUIRED_TAGS if tag not in ds]
        if missing:
            raise ScanError(f"lacks the DICOM tags {', '.join(missing)} that place a CT slice in the world", path=f,
                            fix="Export the series again from the scanner or PACS with its full headers")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ScanError("is a multi-frame DICOM file, which noduleflow does not read", path=f,
                            fix="Convert the series to .nii.gz (e.g. with dcm2niix) and read that")
    _check_consistent(slices, folder)

    first = slices[0][1]
    col_dir, row_dir = (np.asarray(first.ImageOrientationPatient[i : i + 3], dtype=np.float64) for i in (0, 3))
    normal = np.cross(col_dir, row_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[k] for k in order]
    positions = positions[order]
    step = _slice_step(positions, [f for f, _ in slices], folder)

    hu = _stack_hu(slices)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    slice_mm = float(np.linalg.norm(step))
    direction = np.column_stack([col_dir, row_dir, step / slice_mm])
    return CtVolume(hu, positions[0], [col_mm, row_mm, slice_mm], direction, series_uid=series[0] or folder.name)


def _read_slice(path: Path) -> pydicom.Dataset | None:
    """The parsed file, or None if it is not a DICOM file with pixel data."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError):
        return None
    except OSError as err:
        raise ScanError(f"cannot be read ({err})", path=path, fix="Check the file's permissions") from None
    return ds if "PixelData" in ds else None


def _check_consistent(slices: list[tuple[Path, pydicom.Dataset]], folder: Path) -> None:
    """Every slice must share the first one's size, orientation and pixel spacing."""
    f0, ds0 = slices[0]
    size0 = (int(ds0.Rows), int(ds0.Columns))
    iop0 = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    spacing0 = np.asarray(ds0.PixelSpacing, dtype=np.float64)
    for f, ds in slices[1:]:
        size = (int(ds.Rows), int(ds.Columns))
        if size != size0:
            raise ScanError(f"has inconsistent slice sizes: {f0.name} is {size0[0]}x{size0[1]} but {f.name} is {size[0]}x{size[1]} (rows x columns)",
                            path=folder, fix=f"Remove the slices that do not belong to the series; {_ONE_SERIES_FIX.lower()}")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), iop0, atol=_GEOMETRY_ATOL):
            raise ScanError(f"has slices with different orientations: {f0.name} and {f.name} (ImageOrientationPatient)",
                            path=folder, fix=_ONE_SERIES_FIX)
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=np.float64), spacing0, atol=_GEOMETRY_ATOL):
            raise ScanError(f"has slices with different pixel spacings: {f0.name} and {f.name} (PixelSpacing)",
                            path=folder, fix=_ONE_SERIES_FIX)


def _slice_step(positions: np.ndarray, files: list[Path], folder: Path) -> np.ndarray:
    """The (3,) world mm step from one slice to the next, checked to be even across the series.

    positions: (N, 3) ImagePositionPatient in sorted order.
    """
    n = len(positions)
    if n < 2:
        raise ScanError("holds a single slice; a CT volume needs at least two", path=folder, fix="Point at a folder with the whole series")
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    if np.any(gaps < _GEOMETRY_ATOL):
        k = int(np.argmin(gaps))
        raise ScanError(f"has two slices at the same position: {files[k].name} and {files[k + 1].name}", path=folder,
                        fix="The folder mixes acquisitions (phases, echoes or a repeated scan): keep one slice per position")
    step = (positions[-1] - positions[0]) / (n - 1)
    off_line = np.linalg.norm(positions - (positions[0] + np.arange(n)[:, None] * step), axis=1)
    if off_line.max() > _GAP_RTOL * np.linalg.norm(step):
        raise ScanError(f"has unevenly spaced slices (gaps from {gaps.min():.3f} to {gaps.max():.3f} mm): a slice is missing or misplaced",
                        path=folder, fix="Export the complete series again")
    return step


def _stack_hu(slices: list[tuple[Path, pydicom.Dataset]]) -> np.ndarray:
    """(I, R, C) int16 HU from the sorted slices: stored value * RescaleSlope + RescaleIntercept.

    Filled one slice at a time, so no full-size int32 or float temporary is ever made.
    """
    first = slices[0][1]
    hu = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.int16)
    for k, (f, ds) in enumerate(slices):
        stored = _stored_pixels(f, ds)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope == 1 and intercept == round(intercept):  # the common case: exact integer arithmetic
            hu[k] = to_hu_int16(stored.astype(np.int32) + int(intercept))
        else:
            hu[k] = to_hu_int16(stored * np.float32(slope) + np.float32(intercept))
    return hu


def _stored_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """(R, C) stored values of one slice.

    Uncompressed little-endian 16-bit pixels (nearly every CT) are viewed straight from the
    bytes, three times faster than pydicom's general decoder, which handles everything else.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if (ds.file_meta.get("TransferSyntaxUID") in _RAW_LITTLE_ENDIAN and int(ds.get("BitsAllocated", 0)) == 16
            and int(ds.get("SamplesPerPixel", 1)) == 1 and (int(ds.get("BitsStored", 16)) == 16 or not signed)
            and len(ds.PixelData) >= 2 * rows * cols):
        return np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    try:
        return ds.pixel_array
    except Exception as err:  # pydicom raises several types for undecodable pixel data
        raise ScanError(f"has pixel data that cannot be decoded ({err})", path=path,
                        fix="Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or decompress the series (gdcmconv --raw)") from None
