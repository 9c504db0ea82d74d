"""Helpers of the server tests: a scan written in each upload format, zips built by hand, PNG decoding."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from noduleflow.ct import CtVolume, read_volume, write_volume

sys.path.insert(0, str(Path(__file__).parents[1] / "ct"))  # the DICOM series writer of the ct tests
from dicom_helpers import write_series as _write_series  # noqa: E402  (found through the path above)

FORMATS = ("mha", "nii.gz", "mhd-zip", "dicom-zip")


def upload_file(volume: CtVolume, fmt: str, folder: Path) -> tuple[str, bytes, Path]:
    """(file name, bytes to upload, what `read_volume` reads locally for the same scan) of `volume` in `fmt`."""
    folder.mkdir(parents=True, exist_ok=True)
    name = volume.series_uid or "scan"
    if fmt in ("mha", "nii.gz"):
        path = write_volume(volume, folder / f"{name}.{fmt}")
        return path.name, path.read_bytes(), path
    if fmt == "mhd-zip":
        header = write_volume(volume, folder / f"{name}.mhd")
        return (
            f"{name}.zip",
            zip_bytes(
                {
                    header.name: header.read_bytes(),
                    header.with_suffix(".raw").name: header.with_suffix(".raw").read_bytes(),
                }
            ),
            header,
        )
    series = folder / "series"
    _write_series(
        series,
        volume.hu,
        slopes=[1.0] * len(volume.hu),
        intercepts=[0.0] * len(volume.hu),
        direction=np.eye(3),
        origin=volume.origin_xyz,
        series_uid="1.2.826.0.1.3680043.8.498.1",
    )
    return "series.zip", zip_bytes({f"series/{p.name}": p.read_bytes() for p in sorted(series.iterdir())}), series


def zip_bytes(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def symlink_zip(name: str, target: str) -> bytes:
    """A zip whose one entry `name` is a symbolic link to `target` (as `zip --symlinks` writes it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.create_system = 3  # unix: external_attr holds st_mode
        info.external_attr = 0o120777 << 16
        zf.writestr(info, target)
    return buf.getvalue()


def png(data: bytes) -> np.ndarray:
    """A PNG's pixels: (H, W) for grayscale, (H, W, 4) for RGBA."""
    return np.asarray(Image.open(io.BytesIO(data)))


def read(path: Path) -> CtVolume:
    return read_volume(path)
