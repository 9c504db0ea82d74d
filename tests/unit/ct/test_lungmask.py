"""`lung_mask` on a small chest phantom: lungs in, juxta-pleural nodule and vessel in, air and body out."""

import numpy as np
import pytest
from scipy import ndimage

from noduleflow.ct import CtVolume, lung_mask

SPACING_XYZ = (2.0, 2.0, 3.0)
SHAPE = (56, 150, 170)  # (I, R, C): 168 mm of chest, 300 x 340 mm field of view


def _phantom(nodule_radius_mm=6.0, lung_offset_mm=70.0, dome=False):
    """Body ellipse at 0 HU in -1000 HU air; two lung ellipsoids at -850 HU; a 0 HU nodule on the
    lateral wall of the right-hand lung, a mass wider than the closing in its middle, a vessel
    across the left-hand lung, and a 14 mL stomach gas bubble below the mediastinum. The lung
    centres are `lung_offset_mm` either side of the midline; `dome` raises a 45 mm radius
    diaphragm dome into the base of the right-hand lung. Returns the volume and a dict of
    (I, R, C) bool masks of its parts."""
    i, r, c = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    z, y, x = i * SPACING_XYZ[2], r * SPACING_XYZ[1], c * SPACING_XYZ[0]
    cz, cy, cx = 84.0, 150.0, 170.0
    body = np.broadcast_to(((x - cx) / 150) ** 2 + ((y - cy) / 110) ** 2 <= 1, SHAPE)
    lung_axes = np.array([50.7, 75.3, 70.0])  # x, y, z semi-axes in mm, edges between voxel centres
    parts = {"body": body}
    for name, side in (("lung_right", 1), ("lung_left", -1)):
        parts[name] = ((x - cx - side * lung_offset_mm) / lung_axes[0]) ** 2 + ((y - cy) / lung_axes[1]) ** 2 + (
            (z - cz) / lung_axes[2]
        ) ** 2 <= 1
    lungs = parts["lung_right"] | parts["lung_left"]
    wall_x = cx + lung_offset_mm + lung_axes[0]  # lateral edge of the right-hand lung at its middle
    nodule_x = wall_x - 0.8 * nodule_radius_mm  # overlaps the chest wall: juxta-pleural
    parts["nodule"] = ((x - nodule_x) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= nodule_radius_mm**2) & lungs
    parts["mass"] = (x - (cx + lung_offset_mm)) ** 2 + (y - cy) ** 2 + (
        z - cz
    ) ** 2 <= 20.0**2  # only hole filling keeps it
    parts["vessel"] = (
        ((x - (cx - lung_offset_mm)) ** 2 + (z - cz) ** 2 <= 3.0**2) & (np.abs(y - cy) < 40) & np.ones(SHAPE, bool)
    )
    parts["gas"] = (x - cx) ** 2 + (y - (cy + 40)) ** 2 + (z - 10) ** 2 <= 15.0**2
    hu = np.full(SHAPE, -1000, np.int16)
    hu[body] = 0
    hu[lungs] = -850
    hu[parts["nodule"] | parts["vessel"] | parts["mass"]] = 0
    hu[parts["gas"]] = -1000
    if dome:
        parts["dome"] = (x - (cx + lung_offset_mm)) ** 2 + (y - cy) ** 2 + (z - 4.0) ** 2 <= 45.0**2
        hu[parts["dome"]] = 40
    hu += np.random.default_rng(0).normal(0, 15, SHAPE).astype(np.int16)  # CT noise
    return CtVolume(hu, [-170.0, -150.0, -84.0], SPACING_XYZ, np.eye(3)), parts


@pytest.fixture(scope="module")
def phantom_and_mask():
    volume, parts = _phantom()
    return volume, parts, lung_mask(volume)


def test_lungs_and_their_contents_are_inside(phantom_and_mask):
    volume, parts, mask = phantom_and_mask
    assert mask.dtype == bool and mask.shape == volume.shape
    assert mask[parts["lung_right"] | parts["lung_left"]].all()
    assert parts["nodule"].sum() > 30 and mask[parts["nodule"]].all()
    assert mask[parts["vessel"]].all()
    assert mask[parts["mass"]].all()


def test_a_mask_on_every_second_row_and_column_is_the_full_one_to_a_voxel(phantom_and_mask):
    volume, parts, mask = phantom_and_mask
    coarse = lung_mask(volume, step=2)
    assert coarse.shape == mask.shape and coarse.dtype == bool
    edge = ndimage.binary_dilation(mask, structure=np.ones((1, 3, 3), bool)) & ~ndimage.binary_erosion(
        mask, structure=np.ones((1, 3, 3), bool)
    )
    assert (coarse == mask)[~edge].all()  # they differ only on the mask's edge
    assert abs(int(coarse.sum()) - int(mask.sum())) < 0.02 * mask.sum()
    assert coarse[parts["nodule"]].mean() > 0.95 and not coarse[parts["gas"]].any()


def test_outside_air_body_and_gas_are_outside(phantom_and_mask):
    _, parts, mask = phantom_and_mask
    lungs = parts["lung_right"] | parts["lung_left"]
    assert not mask[~parts["body"]].any()
    assert not mask[parts["gas"]].any()
    # the closing may take a rim of a few mm in concave places; nothing far from the lungs
    lung_rows = lungs.any(axis=(0, 2))
    assert not mask[:, ~lung_rows, :].any()
    extra = mask & ~lungs
    assert extra.sum() < 0.03 * lungs.sum()


def test_empty_mask_without_lungs():
    volume, parts = _phantom()
    no_lungs = np.where(parts["body"], np.int16(40), volume.hu)  # all tissue inside the body
    mask = lung_mask(CtVolume(no_lungs, volume.origin_xyz, volume.spacing_xyz, volume.direction))
    assert mask.shape == volume.shape and mask.dtype == bool and not mask.any()
    air = CtVolume(np.full((8, 20, 20), -1000, np.int16), [0, 0, 0], [1, 1, 1], np.eye(3))
    assert not lung_mask(air).any()
    pocket = no_lungs.copy()
    pocket[25:30, 70:75, 80:85] = -1000  # 125 voxels of 12 mm^3: 1.5 mL of trapped air is no lung
    assert not lung_mask(CtVolume(pocket, volume.origin_xyz, volume.spacing_xyz, volume.direction)).any()


def test_airway_leaving_the_body_above_the_lungs_does_not_drop_the_lungs():
    """A trachea that reaches the outside air (a scan including mouth and nose) joins lungs and
    outside in 3D; the lungs must still be found. The airways also make both lungs one
    component, so the gas bubble is the second largest and only its size keeps it out."""
    volume, parts = _phantom()
    hu = volume.hu.copy()
    top = int(np.flatnonzero(parts["lung_left"].any(axis=(1, 2)))[-1])
    hu[top - 3 : top - 1, 73:77, 50:121] = -1000  # bronchi into both lungs near their tops
    hu[top - 3 :, 73:77, 83:87] = -1000  # trachea from there up to the last slice
    hu[-2:, 73:77, :87] = -1000  # then out to the side of the scan
    mask = lung_mask(CtVolume(hu, volume.origin_xyz, volume.spacing_xyz, volume.direction))
    assert mask[parts["lung_right"] | parts["lung_left"]].all()
    assert not mask[parts["gas"]].any()


def test_larger_nodule_needs_a_larger_closing():
    volume, parts = _phantom(nodule_radius_mm=12.0)
    assert not lung_mask(volume, closing_mm=4.0)[parts["nodule"]].all()
    assert lung_mask(volume, closing_mm=14.0)[parts["nodule"]].all()


def test_mediastinum_between_close_lungs_stays_outside():
    """Lungs 12.6 mm apart: one closing over both would bridge the gap, one per lung does not."""
    volume, parts = _phantom(lung_offset_mm=57.0)
    mask = lung_mask(volume)
    assert mask[parts["lung_right"] | parts["lung_left"]].all()
    x = np.arange(SHAPE[2]) * SPACING_XYZ[0]
    midline = np.abs(x - 170.0) <= 4.0
    assert not mask[:, :, midline].any()


def test_dome_ringed_by_lung_stays_outside():
    """Near the lung base a slice shows lung around the diaphragm's dome: a hole too big to be a nodule."""
    volume, parts = _phantom(dome=True)
    mask = lung_mask(volume)
    k = 13  # z = 39 mm: dome radius 28 mm (> max_hole_mm / 2) inside a ring of lung
    dome, lung = parts["dome"][k], parts["lung_right"][k] & ~parts["dome"][k]
    # the square closing may take a rim of a voxel or two where the lung curves round the dome
    dome_core = ndimage.distance_transform_edt(dome, sampling=SPACING_XYZ[1::-1]) > 4.0
    assert dome_core.sum() > 400 and lung.sum() > 300
    assert not mask[k][dome_core].any()
    assert mask[k][lung].all()


@pytest.mark.parametrize("spacing", [(1e-300, 1e-300, 1e-300), (1e-5, 1e-5, 1e-5)])
def test_tiny_spacing_gives_a_mask_not_a_division_by_zero(spacing):
    """A CtVolume only promises positive spacing; the mask must not divide by a voxel volume that rounds to 0.
    The enclosed air is far below `min_lung_ml` at such sizes, so it is no lung."""
    hu = np.full((4, 20, 20), -1000, np.int16)
    hu[:, 2:18, 2:18] = 0
    hu[:, 6:14, 6:14] = -850
    mask = lung_mask(CtVolume(hu, [0, 0, 0], spacing, np.eye(3)))
    assert mask.shape == hu.shape and mask.dtype == bool
    assert not mask.any()
    assert lung_mask(CtVolume(hu, [0, 0, 0], spacing, np.eye(3)), min_lung_ml=0.0)[:, 6:14, 6:14].all()
