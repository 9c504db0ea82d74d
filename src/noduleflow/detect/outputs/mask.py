"""The candidate mask as NIfTI in the scan's own geometry, so any viewer overlays it on the scan.

The file is written by `ct.nifti.write_nifti` itself (a `CtVolume` of 0/1 values with the scan's
origin, spacing and direction), so the mask's affine is built by the same code as the scan's
would be: LPS -> RAS flip of the first two axes, sform and qform both "scanner".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noduleflow.ct import CtVolume
from noduleflow.ct.nifti import write_nifti
from noduleflow.files import atomic_path


def write_mask(volume: CtVolume, mask: np.ndarray, path: str | Path) -> Path:
    """Write the (I, R, C) bool `mask` of `volume` as a 0/1 NIfTI (`.nii.gz`) at `path`, atomically; returns `path`.

    Atomic like `files.atomic_write`: nibabel writes a temporary file beside `path` (same suffix, so
    the same compression), which is fsynced and renamed over `path`.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise ValueError(f"the candidate mask's shape {mask.shape} is not the scan's {volume.shape} (I, R, C)")
    labels = CtVolume(mask.astype(np.int16), volume.origin_xyz, volume.spacing_xyz, volume.direction, volume.series_uid)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=f".tmp{suffix}") as tmp:
        write_nifti(labels, tmp)
    return path
