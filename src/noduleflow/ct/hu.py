"""Hounsfield units as int16: the one dtype every `CtVolume` holds.

CT values span about -1024 (air) to +3071 (dense bone, metal) HU, which int16 holds exactly and in
half the memory of float32. Readers meet other dtypes (uint16 DICOM pixels, float NIfTI, rescaled
values), so each one ends with `to_hu_int16`.
"""

from __future__ import annotations

import io
import logging
from typing import BinaryIO

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
NAN_HU = -1024
"""HU given to NaN voxels: some float exports mark voxels outside the scanned field as NaN; air is
what the rest of the pipeline expects there."""
_AIR_BELOW_HU = -500
_log = logging.getLogger("noduleflow")


def to_hu_int16(values: np.ndarray) -> np.ndarray:
    """Any numeric array -> the same shape as int16 HU, rounded to nearest and clipped to int16.

    int16 input is returned as is (no copy), so reading an int16 scan costs nothing extra.
    """
    a = np.asarray(values)
    if a.dtype == np.int16:
        return a
    if a.dtype.kind == "b":
        raise ValueError(f"HU values must be numeric, got a {a.dtype} array")
    if a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        lo, hi = max(info.min, INT16_MIN), min(info.max, INT16_MAX)
        if (lo, hi) != (info.min, info.max):
            # bounds in the input's own dtype: a Python -32768 does not fit a uint16
            a = np.clip(a, a.dtype.type(lo), a.dtype.type(hi))
        return a.astype(np.int16)
    if a.dtype.kind == "f":
        a = np.rint(a)
        a = np.nan_to_num(a, nan=NAN_HU, posinf=INT16_MAX, neginf=INT16_MIN, copy=False)
        return np.clip(a, INT16_MIN, INT16_MAX, out=a).astype(np.int16)
    raise ValueError(f"HU values must be integer or float, got a {a.dtype} array")


def count_clipped(values: np.ndarray) -> int:
    """How many values `to_hu_int16` would clip to the int16 range (NaN is not counted: it becomes air)."""
    a = np.asarray(values)
    if a.dtype == np.int16 or a.size == 0 or a.dtype.kind not in "iuf":
        return 0
    if a.dtype.kind in "iu":
        if a.min() >= INT16_MIN and a.max() <= INT16_MAX:
            return 0
        return int(np.count_nonzero((a < INT16_MIN) | (a > INT16_MAX)))
    with np.errstate(invalid="ignore"):
        return int(np.count_nonzero((a < INT16_MIN - 0.5) | (a >= INT16_MAX + 0.5)))


def read_hu_slices(
    stream: BinaryIO, dtype: np.dtype, shape_irc: tuple[int, int, int], *, slope: float = 1.0, inter: float = 0.0
) -> tuple[np.ndarray, int, int]:
    """(I, R, C) int16 HU read from `stream`, as `slope * stored + inter`, converted one slice at a time.

    stream: an open binary file positioned at the first voxel, which holds the voxels of `dtype`
    (any byte order) with C varying fastest, then R, then I (the layout of MetaImage and NIfTI).
    Only the int16 result and one slice are ever in memory, whatever the stored type (a float64
    scan would take four times the result as a whole), and the result's pages are only touched as
    bytes arrive, so a short file costs what it holds, not what its header claims.
    Scaling is done in float32 (float64 for float64 data). Returns (hu, clipped voxel count, bytes
    read), the bytes short of the full size if the stream ends early.
    """
    hu = np.empty(shape_irc, dtype=np.int16)
    slice_bytes = shape_irc[1] * shape_irc[2] * dtype.itemsize
    scaled = slope != 1 or inter != 0
    if dtype == np.int16 and dtype.isnative and not scaled:  # the usual CT file: straight into the result
        if isinstance(stream, io.BufferedReader):  # a plain file: numpy's one read is faster than readinto
            flat = np.fromfile(stream, dtype=np.int16, count=hu.size)
            return (flat.reshape(shape_irc) if flat.size == hu.size else hu), 0, flat.nbytes
        return hu, 0, _read_into(stream, hu.reshape(-1).view(np.uint8))
    clipped = read = 0
    for k in range(shape_irc[0]):
        data = _read_exactly(stream, slice_bytes)
        read += len(data)
        if len(data) < slice_bytes:
            break
        values = np.frombuffer(data, dtype=dtype).reshape(shape_irc[1:])
        if scaled:
            work = np.float64 if dtype == np.float64 else np.float32
            values = values.astype(work) * work(slope) + work(inter)
        clipped += count_clipped(values)
        hu[k] = to_hu_int16(values)
    return hu, clipped, read


def _read_into(stream: BinaryIO, buffer: np.ndarray) -> int:
    view, done = memoryview(buffer), 0
    while done < len(view):
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    parts, done = [], 0
    while done < size:
        part = stream.read(size - done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def warn_if_not_ct(hu: np.ndarray, path, *, clipped: int = 0, modality: str | None = None) -> None:
    """Log one warning for a scan whose values are not those of a CT in HU (noduleflow reads it anyway).

    Reasons: a DICOM Modality other than CT (MR has no HU scale); values clipped to int16 (the scan
    held values no CT has, or was scaled wrongly); no voxel below `_AIR_BELOW_HU` (every chest CT
    holds air near -1000 HU, while MR or unscaled stored values start near 0).
    """
    reasons = []
    if modality and modality.upper() != "CT":
        reasons.append(f"its DICOM Modality is {modality!r}, not CT")
    if clipped:
        reasons.append(f"{clipped} voxel(s) lay outside int16 and were clipped to {INT16_MIN}..{INT16_MAX}")
    # air fills large regions, so every 16th voxel finds it, 16 times faster than the whole array
    if hu.size and int(hu[:, ::4, ::4].min()) > _AIR_BELOW_HU:
        reasons.append(
            f"no voxel is below {_AIR_BELOW_HU} HU, where air is in every CT "
            "(is it MR, or stored values without their rescale?)"
        )
    if reasons:
        _log.warning(
            "%s: does not look like a CT scan in Hounsfield units: %s; results on it will not mean much",
            path,
            "; ".join(reasons),
        )
