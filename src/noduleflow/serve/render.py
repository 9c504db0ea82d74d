"""Slice and mask PNGs for the viewer, from a job's cached arrays (never from the upload again).

A job keeps its scan as `scan.npy` (int16 HU, (I, R, C)), read memory-mapped so one slice costs one slice's
bytes, and its candidate mask as `mask.npy`: (I, ceil(R * C / 8)) uint8, each slice's bits packed (8x
smaller than bool). PNGs are encoded by Pillow (matplotlib's own dependency).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (centre, width) in HU, the radiologists' usual: lung -1350..150 HU, mediastinum -160..240 HU
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0)}
MASK_RGBA = (255, 64, 32, 140)  # a translucent orange over the grey slice


def save_scan(folder: Path, hu: np.ndarray, mask: np.ndarray | None) -> None:
    """Write `folder`/scan.npy ((I, R, C) int16) and, when given, `folder`/mask.npy (the (I, R, C) bool mask's bits)."""
    from noduleflow.files import atomic_open

    with atomic_open(folder / "scan.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(hu, dtype=np.int16))
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != hu.shape:
            raise ValueError(f"candidate mask of shape {mask.shape} does not match the scan's {hu.shape}")
        with atomic_open(folder / "mask.npy", "wb") as fh:
            np.save(fh, np.packbits(mask.reshape(len(mask), -1), axis=1))


def load_scan(folder: Path) -> np.ndarray:
    """The job's (I, R, C) int16 scan, memory-mapped."""
    return np.load(folder / "scan.npy", mmap_mode="r", allow_pickle=False)


def slice_png(scan: np.ndarray, k: int, window: str = "lung") -> bytes:
    """Axial slice `k` of `scan` ((I, R, C) HU) as an 8-bit grayscale PNG ((R, C) pixels) in the named HU window."""
    centre, width = WINDOWS[window]
    lo = centre - width / 2
    grey = np.clip((np.asarray(scan[k], dtype=np.float32) - lo) * (255.0 / width), 0, 255).astype(np.uint8)  # (R, C)
    return _png(Image.fromarray(grey))


def mask_png(folder: Path, shape: tuple[int, int, int], k: int) -> bytes:
    """Slice `k` of the job's candidate mask as an (R, C) RGBA PNG: `MASK_RGBA` where set, transparent elsewhere
    (all transparent when the job has no mask)."""
    _, rows, cols = shape
    rgba = np.zeros((rows, cols, 4), np.uint8)
    path = folder / "mask.npy"
    if path.is_file():
        packed = np.load(path, mmap_mode="r", allow_pickle=False)
        bits = np.unpackbits(np.asarray(packed[k]), count=rows * cols).reshape(rows, cols).astype(bool)
        rgba[bits] = MASK_RGBA
    return _png(Image.fromarray(rgba))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)  # level 3: fast, and nearly level 9's size
    return buf.getvalue()
