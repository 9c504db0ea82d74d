"""A PNG per scan: the axial slices through its top findings, each finding circled at its estimated size.

Drawn in voxel coordinates (columns right, rows down, as the scanner stores the slice), so the
picture needs no geometry beyond the finding's (I, R, C) centre and the in-plane pixel size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from noduleflow.ct import CtVolume
from noduleflow.detect.predictor import ScanResult
from noduleflow.figures import save_png

_WINDOW = (-1350.0, 150.0)  # lung window, HU


def write_scan_png(volume: CtVolume, result: ScanResult, path: str | Path, *, top: int = 4) -> Path:
    """Write up to `top` axial panels (one per finding, most probable first) to `path`, atomically."""
    shown = result.findings[:top]
    panels = max(len(shown), 1)
    fig = Figure(figsize=(3.4 * panels, 3.8), dpi=80, facecolor="black")
    col_mm, row_mm = volume.spacing_xyz[0], volume.spacing_xyz[1]
    for k in range(panels):
        ax = fig.add_subplot(1, panels, k + 1)
        ax.set_axis_off()
        if not shown:
            i = volume.shape[0] // 2
            note = "; ".join(result.warnings) or "no findings"
            ax.set_title(f"slice {i}: {note}"[:60], color="white", fontsize=8)
        else:
            f = shown[k]
            i, r, c = (float(v) for v in f.center_irc)
            i = int(np.clip(round(i), 0, volume.shape[0] - 1))
            ax.add_patch(
                Ellipse(
                    (c, r),
                    f.diameter_mm / col_mm + 4,
                    f.diameter_mm / row_mm + 4,
                    fill=False,
                    color="red",
                    linewidth=1.2,
                )
            )
            mal = "" if f.malignancy is None else f", malignant {f.malignancy:.2f}"
            ax.set_title(
                f"#{k + 1} slice {i}: p {f.probability:.2f}, {f.diameter_mm:.1f} mm{mal}", color="white", fontsize=8
            )
        if volume.hu.size:
            ax.imshow(volume.hu[i], cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], interpolation="nearest")
    title = "".join(
        c if " " <= c <= "~" else "?" for c in result.series_uid[-24:]
    )  # a header's uid may hold any character
    fig.suptitle(title or "scan", color="white", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, facecolor="black")
