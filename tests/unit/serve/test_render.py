"""Slice and mask PNGs from a job's cached arrays: windows, packed mask bits, transparency."""

from __future__ import annotations

import numpy as np
import pytest
from scan_files import png

from noduleflow.serve import render


@pytest.fixture
def cached(tmp_path):
    hu = np.full((3, 5, 7), -1000, np.int16)
    hu[1, 2, 3], hu[1, 0, 0], hu[1, 4, 6] = -600, 40, 3000
    mask = np.zeros(hu.shape, bool)
    mask[1, 1:3, 2:5] = True
    render.save_scan(tmp_path, hu, mask)
    return tmp_path, hu, mask


def test_windows_map_hu_to_grey(cached):
    folder, hu, _ = cached
    scan = render.load_scan(folder)
    assert isinstance(scan, np.memmap) and scan.dtype == np.int16 and np.array_equal(scan, hu)
    lung = png(render.slice_png(scan, 1, "lung"))
    soft = png(render.slice_png(scan, 1, "mediastinum"))
    # lung window -1350..150 HU: -1000 dark grey, -600 mid grey; mediastinum -160..240 HU: 40 mid grey
    assert lung.shape == (5, 7) and lung[0, 1] == 59 and lung[2, 3] == 127 and lung[4, 6] == 255
    assert soft[0, 0] == 127 and soft[2, 3] == 0 and soft[4, 6] == 255


def test_mask_is_opaque_exactly_where_set(cached):
    folder, hu, mask = cached
    rgba = png(render.mask_png(folder, hu.shape, 1))
    assert rgba.shape == (5, 7, 4)
    assert np.array_equal(rgba[..., 3] > 0, mask[1]) and tuple(rgba[1, 2]) == render.MASK_RGBA
    assert not png(render.mask_png(folder, hu.shape, 0))[..., 3].any()
    (folder / "mask.npy").unlink()  # a job without a candidate mask: all transparent, same size
    assert png(render.mask_png(folder, hu.shape, 1)).shape == (5, 7, 4)
    assert not png(render.mask_png(folder, hu.shape, 1))[..., 3].any()


def test_mask_of_another_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        render.save_scan(tmp_path, np.zeros((2, 3, 4), np.int16), np.zeros((2, 3, 5), bool))
