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

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from noduleflow.ct.hu import count_clipped, to_hu_int16, warn_if_not_ct
from noduleflow.ct.volume import MAX_SPACING_MM, MIN_SPACING_MM, CtVolume, check_voxel_count, checked_volume
from noduleflow.errors import ScanError

_REQUIRED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_GEOMETRY_ATOL = 1e-4
"""Orientation cosines and pixel spacings equal to this tolerance count as the same."""
_COSINE_ATOL = 1e-3
"""How far ImageOrientationPatient's two vectors may be from unit length and from perpendicular
(scanners write the cosines with 6 digits or fewer)."""
_GAP_RTOL = 0.1
"""A slice may sit this fraction of the slice spacing off the evenly spaced line; a missing slice
moves some slice by at least half a spacing."""
_RAW_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_RAW_GROUPS = (0x0002, 0x0008)
"""The first group of a DICOM file written without its 128-byte preamble and 'DICM' (old ACR-NEMA
style exports): file meta, or the identifying group."""
_ONE_SERIES_FIX = "Move each series into its own folder and read one folder at a time"
_EXPORT_FIX = "Export the series again from the scanner or PACS with its full headers"


def read_dicom_series(folder: str | Path) -> CtVolume:
    """Read every DICOM image file in `folder` (not its subfolders) as one (I, R, C) int16 HU volume.

    Pixels become HU with each slice's RescaleSlope and RescaleIntercept. Files that are not
    DICOM, or DICOM without pixels (DICOMDIR, reports), are skipped; files without the 128-byte
    preamble are read if they parse as a DICOM image. The series uid is the SeriesInstanceUID (the
    folder's name if the files have none). A Modality other than CT is read with a warning.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ScanError(
            "is an empty folder, not a DICOM series",
            path=folder,
            fix="Point at the folder that holds the series' slice files",
        )
    slices = [(f, ds) for f in files if (ds := _read_slice(f)) is not None]
    if not slices:
        raise ScanError(
            f"holds {len(files)} files but no DICOM image file",
            path=folder,
            fix="Point at the folder that holds the series' slice files, or pass one scan file (.mhd, .mha, .nii, .nii.gz)",
        )
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices})
    if len(series) > 1:
        raise ScanError(f"mixes {len(series)} DICOM series: {', '.join(series)}", path=folder, fix=_ONE_SERIES_FIX)
    geometry = [_slice_geometry(f, ds) for f, ds in slices]
    _check_consistent(slices, geometry, folder)

    size, (col_dir, row_dir), (row_mm, col_mm), _ = geometry[0]
    check_voxel_count((len(slices), *size), path=folder, what="the series (slices x rows x columns)")
    normal = np.cross(col_dir, row_dir)
    positions = np.array([g[3] for g in geometry])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[k] for k in order]
    positions = positions[order]
    step = _slice_step(positions, [f for f, _ in slices], folder)

    hu, clipped = _stack_hu(slices, size)
    slice_mm = float(np.linalg.norm(step))
    direction = np.column_stack([col_dir, row_dir, step / slice_mm])
    volume = checked_volume(
        hu, positions[0], [col_mm, row_mm, slice_mm], direction, series[0] or folder.name, path=folder
    )
    modalities = sorted({str(ds.get("Modality", "") or "") for _, ds in slices} - {""})
    not_ct = next((m for m in modalities if m.upper() != "CT"), None)
    warn_if_not_ct(volume.hu, folder, clipped=clipped, modality=not_ct)
    return volume


def _read_slice(path: Path) -> pydicom.Dataset | None:
    """The parsed file, or None if it is not a DICOM file with pixel data.

    A file with the 'DICM' marker that does not parse is damaged (a slice would silently go
    missing), so it is an error; a file without it is tried as a preamble-less DICOM data set only
    if it starts like one, and kept only if it holds pixel data.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as err:
        raise ScanError(f"cannot be read ({err.strerror})", path=path, fix="Check the file's permissions") from None
    marked = head[128:132] == b"DICM"
    if not marked and not (len(head) >= 8 and int.from_bytes(head[:2], "little") in _RAW_GROUPS):
        return None
    try:
        ds = pydicom.dcmread(path, force=not marked)
        has_pixels = "PixelData" in ds
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        OverflowError,
        NotImplementedError,
    ) as err:
        if not marked:
            return None
        raise ScanError(
            f"is a damaged DICOM file ({str(err)[:200]})",
            path=path,
            fix="Copy or export the file again, or remove it from the folder",
        ) from None
    except OSError as err:
        raise ScanError(f"cannot be read ({err})", path=path, fix="Check the file's permissions") from None
    if not has_pixels:
        if marked and _is_image(ds):  # an image file cut short: skipping it would silently drop a slice
            raise ScanError(
                "is a DICOM image file without its pixel data (truncated?)",
                path=path,
                fix="Copy or export the file again, or remove it from the folder",
            )
        return None
    if not marked:
        if any(tag not in ds for tag in ("SOPClassUID", *_REQUIRED_TAGS)):
            return None  # something that merely parsed: a real preamble-less CT slice identifies itself
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = getattr(ds, "original_encoding", (True, True))
            raw_syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            ds.file_meta.TransferSyntaxUID = raw_syntax if little else ExplicitVRBigEndian
    return ds


def _is_image(ds: pydicom.Dataset) -> bool:
    """True for a data set that should hold pixels: image tags, or an '... Image Storage' SOP class."""
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    return "Rows" in ds or "ImagePositionPatient" in ds or "Image Storage" in str(getattr(sop_class, "name", ""))


def _values(ds: pydicom.Dataset, tag: str, count: int, path: Path, *, kind=float) -> list:
    """`count` finite numbers from a (multi-valued) tag, or a ScanError naming the tag and the file."""
    raw = ds.get(tag)
    items = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
    try:
        values = [kind(v) for v in items]
    except (TypeError, ValueError, OverflowError):
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ScanError(f"has {tag} = {str(raw)[:80]!r}, not {count} numbers", path=path, fix=_EXPORT_FIX)
    return values


def _slice_geometry(path: Path, ds: pydicom.Dataset):
    """One slice's checked geometry: ((rows, columns), (column direction, row direction), (row mm, column mm),
    position (3,))."""
    missing = [tag for tag in _REQUIRED_TAGS if tag not in ds]
    if missing:
        raise ScanError(
            f"lacks the DICOM tags {', '.join(missing)} that place a CT slice in the world", path=path, fix=_EXPORT_FIX
        )
    frames = _values(ds, "NumberOfFrames", 1, path, kind=int)[0] if ds.get("NumberOfFrames") not in (None, "") else 1
    if frames != 1:
        raise ScanError(
            f"is a multi-frame DICOM file (NumberOfFrames = {frames}), which noduleflow does not read",
            path=path,
            fix="Convert the series to .nii.gz (e.g. with dcm2niix) and read that",
        )
    samples = _values(ds, "SamplesPerPixel", 1, path, kind=int)[0] if "SamplesPerPixel" in ds else 1
    if samples != 1:
        raise ScanError(
            f"has {samples} samples per pixel (colour); a CT slice has 1", path=path, fix="Pass a CT series"
        )
    size = tuple(_values(ds, tag, 1, path, kind=int)[0] for tag in ("Rows", "Columns"))
    if min(size) < 1:
        raise ScanError(f"has {size[0]} rows and {size[1]} columns", path=path, fix=_EXPORT_FIX)
    iop = np.asarray(_values(ds, "ImageOrientationPatient", 6, path))
    col_dir, row_dir = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(col_dir) - 1) > _COSINE_ATOL
        or abs(np.linalg.norm(row_dir) - 1) > _COSINE_ATOL
        or abs(col_dir @ row_dir) > _COSINE_ATOL
    ):
        raise ScanError(
            f"has ImageOrientationPatient = {iop.tolist()}, not two perpendicular unit vectors",
            path=path,
            fix=_EXPORT_FIX,
        )
    spacing = _values(ds, "PixelSpacing", 2, path)
    if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in spacing):
        raise ScanError(
            f"has PixelSpacing = {spacing} mm, outside {MIN_SPACING_MM} to {MAX_SPACING_MM} mm",
            path=path,
            fix=_EXPORT_FIX,
        )
    position = np.asarray(_values(ds, "ImagePositionPatient", 3, path))
    return size, (col_dir / np.linalg.norm(col_dir), row_dir / np.linalg.norm(row_dir)), tuple(spacing), position


def _check_consistent(slices: list[tuple[Path, pydicom.Dataset]], geometry: list, folder: Path) -> None:
    """Every slice must share the first one's size, orientation and pixel spacing."""
    f0 = slices[0][0]
    size0, dirs0, spacing0, _ = geometry[0]
    for (f, _), (size, dirs, spacing, _) in zip(slices[1:], geometry[1:]):
        if size != size0:
            raise ScanError(
                f"has inconsistent slice sizes: {f0.name} is {size0[0]}x{size0[1]} but {f.name} is {size[0]}x{size[1]} (rows x columns)",
                path=folder,
                fix=f"Remove the slices that do not belong to the series; {_ONE_SERIES_FIX.lower()}",
            )
        if not np.allclose(np.concatenate(dirs), np.concatenate(dirs0), atol=_GEOMETRY_ATOL):
            raise ScanError(
                f"has slices with different orientations: {f0.name} and {f.name} (ImageOrientationPatient)",
                path=folder,
                fix=_ONE_SERIES_FIX,
            )
        if not np.allclose(spacing, spacing0, atol=_GEOMETRY_ATOL):
            raise ScanError(
                f"has slices with different pixel spacings: {f0.name} and {f.name} (PixelSpacing)",
                path=folder,
                fix=_ONE_SERIES_FIX,
            )


def _slice_step(positions: np.ndarray, files: list[Path], folder: Path) -> np.ndarray:
    """The (3,) world mm step from one slice to the next, checked to be even across the series.

    positions: (N, 3) ImagePositionPatient in sorted order.
    """
    n = len(positions)
    if n < 2:
        raise ScanError(
            "holds a single slice; a CT volume needs at least two",
            path=folder,
            fix="Point at a folder with the whole series",
        )
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    if np.any(gaps < _GEOMETRY_ATOL):
        k = int(np.argmin(gaps))
        raise ScanError(
            f"has two slices at the same position: {files[k].name} and {files[k + 1].name}",
            path=folder,
            fix="The folder mixes acquisitions (phases, echoes or a repeated scan): keep one slice per position",
        )
    step = (positions[-1] - positions[0]) / (n - 1)
    off_line = np.linalg.norm(positions - (positions[0] + np.arange(n)[:, None] * step), axis=1)
    if off_line.max() > _GAP_RTOL * np.linalg.norm(step):
        raise ScanError(
            f"has unevenly spaced slices (gaps from {gaps.min():.3f} to {gaps.max():.3f} mm): a slice is missing or misplaced",
            path=folder,
            fix="Export the complete series again",
        )
    return step


def _stack_hu(slices: list[tuple[Path, pydicom.Dataset]], size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(I, R, C) int16 HU from the sorted slices (stored value * RescaleSlope + RescaleIntercept), and
    how many voxels were clipped to int16.

    Filled one slice at a time, so no full-size int32 or float temporary is ever made.
    """
    hu = np.empty((len(slices), *size), dtype=np.int16)
    clipped = 0
    for k, (f, ds) in enumerate(slices):
        stored = _stored_pixels(f, ds, size)
        slope = _values(ds, "RescaleSlope", 1, f)[0] if ds.get("RescaleSlope") not in (None, "") else 1.0
        intercept = _values(ds, "RescaleIntercept", 1, f)[0] if ds.get("RescaleIntercept") not in (None, "") else 0.0
        slope = slope or 1.0  # a zero slope is a missing one, as pydicom and ITK take it
        if slope == 1 and intercept == round(intercept) and abs(intercept) < 2**31 - 2**17:  # exact integer arithmetic
            small = stored.dtype.itemsize <= 2
            values = stored.astype(np.int32) + int(intercept) if small else stored.astype(np.float64) + intercept
        else:
            values = stored * np.float32(slope) + np.float32(intercept)
        clipped += count_clipped(values)
        hu[k] = to_hu_int16(values)
    return hu, clipped


def _stored_pixels(path: Path, ds: pydicom.Dataset, size: tuple[int, int]) -> np.ndarray:
    """(R, C) stored values of one slice, with the bits above BitsStored (overlays) masked off and
    signed values sign-extended, as pydicom does.

    Uncompressed little-endian 16-bit pixels (nearly every CT) are viewed straight from the
    bytes, faster than pydicom's general decoder, which handles everything else
    (JPEG Lossless, JPEG-LS, JPEG 2000 and RLE through pylibjpeg).
    """
    rows, cols = size
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits = int(ds.get("BitsStored", 16) or 16)
    if (
        ds.file_meta.get("TransferSyntaxUID") in _RAW_LITTLE_ENDIAN
        and int(ds.get("BitsAllocated", 0) or 0) == 16
        and 1 <= bits <= 16
        and len(ds.PixelData) >= 2 * rows * cols
    ):
        raw = np.frombuffer(ds.PixelData, dtype="<u2", count=rows * cols).reshape(rows, cols)
        if bits < 16:
            raw = raw & np.uint16((1 << bits) - 1)
            if signed:  # two's complement in `bits` bits -> int16
                sign = np.uint16(1 << (bits - 1))
                return ((raw ^ sign).astype(np.int32) - int(sign)).astype(np.int16)
        return raw.view(np.int16) if signed else raw
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom and its plugins raise many types for undecodable pixel data
        raise ScanError(
            f"has pixel data that cannot be decoded ({str(err)[:200]})",
            path=path,
            fix="Install a decoder (pip install pylibjpeg pylibjpeg-libjpeg) or decompress the series (gdcmconv --raw)",
        ) from None
    if pixels.shape != (rows, cols) or pixels.dtype.kind not in "iuf":
        raise ScanError(
            f"decodes to {pixels.dtype} pixels of shape {pixels.shape}, not one {rows}x{cols} slice",
            path=path,
            fix=_EXPORT_FIX,
        )
    return pixels
