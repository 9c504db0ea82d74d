"""A small chest phantom and a stand-in segmentation net for the detection tests (imported by name: `from detect_phantom import ...`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from noduleflow.ct import CtVolume

CONTEXT = 3  # the U-Net input's context slices on each side (a run's data.context)

SPACING_XYZ = (2.0, 2.0, 3.0)
NODULE_IRC, NODULE_RADIUS_MM = (10, 20, 18), 6.0


def chest(shape=(20, 48, 64), nodule=True) -> CtVolume:
    """Soft-tissue body (40 HU) in air, two air-filled lungs (-850 HU) and a 12 mm solid nodule in the left one.

    Spacing 2 x 2 x 3 mm (X, Y, Z); the nodule's centre is voxel NODULE_IRC.
    """
    i, r, c = np.indices(shape)
    hu = np.full(shape, -1000, np.int16)
    hu[:, 4:-4, 4:-4] = 40
    for c0 in (18, 46):
        hu[((r - 24) / 14) ** 2 + ((c - c0) / 10) ** 2 + ((i - 10) / 9) ** 2 < 1] = -850
    if nodule:
        mm = np.stack(
            [
                (i - NODULE_IRC[0]) * SPACING_XYZ[2],
                (r - NODULE_IRC[1]) * SPACING_XYZ[1],
                (c - NODULE_IRC[2]) * SPACING_XYZ[0],
            ]
        )
        hu[(mm**2).sum(0) <= NODULE_RADIUS_MM**2] = 30
    return CtVolume(hu, (-60.0, -40.0, -100.0), SPACING_XYZ, np.eye(3), series_uid="1.2.3.phantom")


class DenseTissue(nn.Module):
    """A stand-in segmentation net: logit > 0 exactly where the centre slice is denser than -400 HU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, CONTEXT : CONTEXT + 1] + 0.4) * 50  # (B, 1, H, W); x is HU / 1000
