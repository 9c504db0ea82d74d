"""Read and write CT volumes by file name: .mhd/.raw, .mha, .nii, .nii.gz, and DICOM series folders.

(First cut: SimpleITK for every format. To be hardened with per-format readers and clear errors.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from noduleflow.ct.volume import CtVolume


def read_volume(path: str | Path) -> CtVolume:
    """Read a scan file into a `CtVolume` (int16 HU, (I, R, C))."""
    path = Path(path)
    image = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(image)
    hu = np.clip(hu, -32768, 32767).astype(np.int16, copy=False)
    return CtVolume(hu, image.GetOrigin(), image.GetSpacing(), np.reshape(image.GetDirection(), (3, 3)), series_uid=_stem(path))


def write_volume(volume: CtVolume, path: str | Path) -> Path:
    """Write a `CtVolume` as .mhd (+ .raw), .mha, .nii or .nii.gz, chosen by the suffix."""
    path = Path(path)
    image = sitk.GetImageFromArray(volume.hu)
    image.SetOrigin(tuple(volume.origin_xyz))
    image.SetSpacing(tuple(volume.spacing_xyz))
    image.SetDirection(tuple(volume.direction.ravel()))
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".mhd", ".mha", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
