"""Resample a `CtVolume` to a new voxel spacing, keeping it where it is in the world.

Convention (the "centre-aligned" grid): the new grid covers the same physical extent
(shape * spacing mm along each axis, rounded to whole new voxels) and its centre lies exactly on the
old grid's centre, so the scan does not drift by half a voxel as it would if voxel (0, 0, 0)
stayed put. The direction matrix is unchanged. New voxel j samples the old array at the
fractional index ``old_centre + (j - new_centre) * new_spacing / old_spacing``; the new origin
is the world position of that index for j = 0. Samples up to half a new voxel beyond the outermost
old voxel centres take the nearest edge value.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from noduleflow.ct.hu import to_hu_int16
from noduleflow.ct.volume import MAX_SPACING_MM, MAX_VOXELS, MIN_SPACING_MM, CtVolume, spacing_in_range
from noduleflow.errors import ConfigError


def resample(volume: CtVolume, spacing_xyz: float | ArrayLike, order: int = 1) -> CtVolume:
    """`volume` resampled to `spacing_xyz` mm (X, Y, Z order, or one number for isotropic voxels).

    order: spline order of the interpolation, 0 (nearest) to 5; 1 (trilinear) is the usual
    choice for CT, higher orders ring at air/tissue edges. Returns int16 HU of shape
    ``round(old_shape * old_spacing / new_spacing)`` (I, R, C), at least 1 along each axis.
    """
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    if spacing.ndim == 0:
        spacing = np.full(3, float(spacing))
    if spacing.shape != (3,) or not spacing_in_range(spacing):
        raise ConfigError(
            f"resample spacing must be one or three millimetre values (X, Y, Z) from {MIN_SPACING_MM} to "
            f"{MAX_SPACING_MM}, got {np.asarray(spacing_xyz).tolist()}",
            fix="Pass e.g. --spacing 1.0 or --spacing 0.7 0.7 1.25",
        )
    if order not in range(6):
        raise ConfigError(
            f"resample order must be an integer from 0 to 5, got {order!r}",
            fix="Use 1 (trilinear) unless you need another",
        )
    if np.array_equal(spacing, volume.spacing_xyz):
        return volume
    old_shape = np.asarray(volume.shape, dtype=np.float64)
    scale = spacing[::-1] / volume.spacing_irc  # old voxels per new voxel, (I, R, C)
    new_shape_float = np.maximum(1, np.round(old_shape / scale))
    if float(np.prod(new_shape_float)) > MAX_VOXELS:  # as floats, before an int64 can overflow or memory is taken
        raise ConfigError(
            f"resampling {volume.series_uid or 'a scan'} ({' x '.join(map(str, volume.shape))} voxels of "
            f"{volume.spacing_irc.tolist()} mm, I R C) to {spacing.tolist()} mm (X Y Z) would make "
            f"{float(np.prod(new_shape_float)):.3g} voxels, more than the {MAX_VOXELS} noduleflow "
            "handles",
            fix="Choose a coarser spacing, e.g. --spacing 0.7,0.7,1.25",
        )
    new_shape = new_shape_float.astype(np.int64)
    offset = (old_shape - 1) / 2 - scale * (new_shape - 1) / 2  # old fractional index of new voxel (0, 0, 0)
    # integer output is rounded to nearest by scipy; orders > 1 overshoot, so go through float32 then clip
    hu = ndimage.affine_transform(
        volume.hu,
        scale,
        offset=offset,
        output_shape=tuple(int(n) for n in new_shape),
        output=np.int16 if order <= 1 else np.float32,
        order=order,
        mode="nearest",
    )
    return CtVolume(to_hu_int16(hu), volume.irc_to_xyz(offset), spacing, volume.direction, series_uid=volume.series_uid)
