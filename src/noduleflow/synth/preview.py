"""Preview PNGs: what a synthetic scan and each of its nodules look like, for a quick look by a person.

The first row shows the scan through its middle (axial, coronal, sagittal); each further row
shows one nodule in three planes through its annotated centre with a circle of its annotated
diameter, so that a wrong centre, size or geometry is visible at a glance. Lung window
(level -600 HU, width 1500 HU); axes in world mm, so anisotropic voxels keep their true shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from noduleflow.ct import CtVolume
from noduleflow.figures import save_png
from noduleflow.synth.plan import ScanPlan

_WINDOW = (-1350.0, 150.0)


def write_preview(volume: CtVolume, plan: ScanPlan, path: Path) -> Path:
    """Write the preview of `volume` (rendered from `plan`) to `path` (.png), atomically."""
    rows = 1 + len(plan.nodules)
    fig = Figure(figsize=(9.6, 3.3 * rows), dpi=80, facecolor="black")
    middle = volume.irc_to_xyz(np.array(volume.shape) / 2 - 0.5)
    for col, plane in enumerate(("axial", "coronal", "sagittal")):
        ax = fig.add_subplot(rows, 3, col + 1)
        _show(ax, volume, plane, middle, None)
        ax.set_title(f"{plan.series_uid[-12:]}  {plane}" if col == 0 else plane, color="white", fontsize=9)
    for row, nodule in enumerate(plan.nodules, start=1):
        centre = plan.world(nodule.centre)
        half = max(25.0, 1.5 * nodule.diameter_mm)
        for col, plane in enumerate(("axial", "coronal", "sagittal")):
            ax = fig.add_subplot(rows, 3, 3 * row + col + 1)
            _show(ax, volume, plane, centre, half)
            u, v = _in_plane(plane, centre)
            ax.add_patch(Circle((u, v), nodule.diameter_mm / 2, fill=False, color="red", linewidth=1))
            if col == 0:
                label = "malignant" if nodule.malignant else "benign"
                ax.set_title(
                    f"{nodule.kind}, {nodule.site}, {nodule.diameter_mm:.1f} mm, {label}",
                    color="white",
                    fontsize=9,
                    loc="left",
                )
    fig.tight_layout()
    return save_png(fig, path, facecolor="black")


def _in_plane(plane: str, xyz: np.ndarray) -> tuple[float, float]:
    """The two world coordinates (mm) drawn as horizontal, vertical in `plane`."""
    return {"axial": (xyz[0], xyz[1]), "coronal": (xyz[0], xyz[2]), "sagittal": (xyz[1], xyz[2])}[plane]


def _show(ax, volume: CtVolume, plane: str, xyz: np.ndarray, half: float | None) -> None:
    """Draw the slice of `volume` in `plane` through world point xyz, cropped to ±half mm around it if given."""
    i, r, c = np.clip(volume.xyz_to_irc(xyz), 0, np.array(volume.shape) - 1)
    lo = volume.irc_to_xyz(np.zeros(3))
    hi = volume.irc_to_xyz(np.array(volume.shape) - 1.0)
    sx, sy, sz = volume.spacing_xyz / 2
    if plane == "axial":
        image, extent = volume.hu[i], (lo[0] - sx, hi[0] + sx, hi[1] + sy, lo[1] - sy)
    elif plane == "coronal":
        image, extent = volume.hu[:, r, :], (lo[0] - sx, hi[0] + sx, lo[2] - sz, hi[2] + sz)
    else:
        image, extent = volume.hu[:, :, c], (lo[1] - sy, hi[1] + sy, lo[2] - sz, hi[2] + sz)
    origin = "upper" if plane == "axial" else "lower"  # z grows upwards: head at the top
    ax.imshow(
        image, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], extent=extent, origin=origin, interpolation="nearest"
    )
    if half is not None:
        u, v = _in_plane(plane, xyz)
        ax.set_xlim(u - half, u + half)
        ax.set_ylim((v + half, v - half) if plane == "axial" else (v - half, v + half))
    ax.set_axis_off()
