"""Hounsfield units as int16: the one dtype every `CtVolume` holds.

CT values span about -1024 (air) to +3071 (dense bone, metal) HU, which int16 holds exactly and in
half the memory of float32. Readers meet other dtypes (uint16 DICOM pixels, float NIfTI, rescaled
values), so each one ends with `to_hu_int16`.
"""

from __future__ import annotations

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
NAN_HU = -1024
"""HU given to NaN voxels: some float exports mark voxels outside the scanned field as NaN; air is
what the rest of the pipeline expects there."""


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
