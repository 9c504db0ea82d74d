"""Segmentation of a whole scan by the 2D U-Net, batched over slices and restricted to the lungs.

The scan is cut into chunks of `chunk` consecutive slices that hold lung; each chunk is segmented in
one batch over the in-plane box of its lung voxels plus `margin` (context for the U-Net), one box
per lung when they lie apart, rounded up to a multiple of the U-Net's downsampling factor. Outside the windows the probability is 0: a
nodule outside the lung field is not a lung nodule. Chunks never share a slice and each box holds
its chunk's lung voxels, so every lung voxel is predicted exactly once.

Why boxes per chunk rather than the whole slice: in a chest CT the lungs fill about a third of the
slice area and part of the slices, and the U-Net's cost is linear in the pixels it sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from noduleflow.data.patches import crop_box, hu_to_unit


@dataclass(frozen=True)
class Window:
    """Slices [i0, i1) over the in-plane box starting at (r0, c0) of size (h, w) voxels (may reach past the scan: air)."""

    i0: int
    i1: int
    r0: int
    c0: int
    h: int
    w: int

    def target(self, shape) -> tuple[slice, slice, slice]:
        """The part of an (I, R, C) array of `shape` this window predicts."""
        return (
            slice(self.i0, self.i1),
            slice(max(self.r0, 0), min(self.r0 + self.h, shape[1])),
            slice(max(self.c0, 0), min(self.c0 + self.w, shape[2])),
        )


def lung_windows(lung: np.ndarray, *, chunk: int = 8, margin: int = 8, multiple: int = 4) -> list[Window]:
    """Windows over the slices of the (I, R, C) bool `lung` mask that hold lung (see the module docstring).

    Within a chunk, lungs whose columns lie further apart than their margins get a box each, so
    the mediastinum between them is not segmented; boxes of one chunk never share a voxel.
    """
    slices = np.flatnonzero(lung.any(axis=(1, 2)))
    runs = np.split(slices, np.flatnonzero(np.diff(slices) > 1) + 1) if len(slices) else []  # consecutive lung slices
    windows = []
    for i0, i1 in (
        (int(run[s]), int(run[min(s + chunk, len(run)) - 1]) + 1) for run in runs for s in range(0, len(run), chunk)
    ):
        block = lung[i0:i1]  # (n, R, C)
        cols = np.flatnonzero(block.any(axis=(0, 1)))
        for group in np.split(cols, np.flatnonzero(np.diff(cols) > 2 * (margin + multiple)) + 1):
            rows = np.flatnonzero(block[:, :, group[0] : group[-1] + 1].any(axis=(0, 2)))
            (r0, h), (c0, w) = (
                _span(max(a[0] - margin, 0), min(a[-1] + 1 + margin, n), multiple)
                for a, n in ((rows, lung.shape[1]), (group, lung.shape[2]))
            )
            windows.append(Window(i0, i1, r0, c0, h, w))
    return windows


def full_windows(shape, *, chunk: int = 16, multiple: int = 4) -> list[Window]:
    """Windows over every voxel of an (I, R, C) scan: whole slices, `chunk` at a time."""
    (r0, h), (c0, w) = _span(0, shape[1], multiple), _span(0, shape[2], multiple)
    return [Window(i, min(i + chunk, shape[0]), r0, c0, h, w) for i in range(0, shape[0], chunk)]


def segment_windows(
    net: Callable[[np.ndarray], np.ndarray],
    hu: np.ndarray,
    windows: list[Window],
    *,
    context: int,
    batch: int = 16,
    to_unit: Callable[[np.ndarray], np.ndarray] = hu_to_unit,
    mirror: bool = False,
) -> np.ndarray:
    """(I, R, C) float32 nodule probabilities of the (I, R, C) int16 `hu` scan: sigmoid of `net` in each window.

    net: (B, 2 * context + 1, h, w) float32 -> (B, 1, h, w) logits, numpy in and out (`detect.contract.Net`).
    to_unit: the model's HU scaling (its `InputContract.to_unit`). Slices past the scan's ends are read as air,
    as in training. mirror: the mean probability over each window and its left-right mirror image (two passes).
    """
    from noduleflow.detect.contract import sigmoid

    probs = np.zeros(hu.shape, dtype=np.float32)
    for win in windows:
        n = win.i1 - win.i0
        out = np.empty((n, win.h, win.w), dtype=np.float32)
        for b, x in window_inputs(hu, win, context=context, batch=batch, to_unit=to_unit):
            p = sigmoid(net(x)[:, 0])  # (m, h, w)
            if mirror:
                p = 0.5 * (p + sigmoid(net(np.ascontiguousarray(x[..., ::-1]))[:, 0])[..., ::-1])
            out[b : b + len(x)] = p
        target = win.target(hu.shape)
        rows, cols = target[1], target[2]
        probs[target] = out[:, rows.start - win.r0 : rows.stop - win.r0, cols.start - win.c0 : cols.stop - win.c0]
    return probs


def window_inputs(
    hu: np.ndarray,
    win: Window,
    *,
    context: int,
    batch: int = 16,
    to_unit: Callable[[np.ndarray], np.ndarray] = hu_to_unit,
):
    """Yield (first slice offset b, (m, 2 * context + 1, h, w) contiguous float32 array): the U-Net's input for
    `win`'s slices, `batch` at a time."""
    n, depth = win.i1 - win.i0, 2 * context + 1
    block = crop_box(hu, (win.i0 - context, win.r0, win.c0), (n + 2 * context, win.h, win.w))
    stack = to_unit(block)  # (n + 2k, h, w)
    views = np.lib.stride_tricks.sliding_window_view(stack, depth, axis=0)  # (n, h, w, 2k + 1), no copy
    for b in range(0, n, batch):
        yield b, np.ascontiguousarray(views[b : b + batch].transpose(0, 3, 1, 2))  # (m, 2k + 1, h, w)


def _span(lo: int, hi: int, multiple: int) -> tuple[int, int]:
    """(start, size): [lo, hi) grown evenly on both sides to a size divisible by `multiple`."""
    size = -(-(hi - lo) // multiple) * multiple
    return int(lo - (size - (hi - lo)) // 2), int(size)
