"""Render a `Body` onto a scan grid: Hounsfield units before vessels, nodules, blur and noise.

Densities (HU) follow what chest CT shows without contrast: air -1000, fat about -100, muscle
and blood about 40, liver 55, lung parenchyma about -850 (denser at the back, where it is
dependent), cancellous bone about 300 inside a cortex of about 750, costal cartilage 130. Edges
are hard here; the scanner blur applied later softens them as a real point-spread function does.
"""

from __future__ import annotations

import numpy as np

from noduleflow.synth.body import Body, airway_lumen, rib_paths
from noduleflow.synth.shapes import Grid, Tubes, blend, ellipsoid_level, tube_fraction

AIR, FAT, MUSCLE, BLOOD, LIVER, CSF = -1000.0, -100.0, 45.0, 40.0, 58.0, 12.0
CORTEX, MARROW, CARTILAGE, DISC, TABLE = 750.0, 300.0, 130.0, 90.0, 120.0


def render_anatomy(body: Body, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Chest on `grid`: (hu float32 (I, R, C), lung mask bool (I, R, C)).

    The lung mask is the lungs' own space (parenchyma, and later the vessels and nodules inside
    it); the mediastinal organs, the spine and the chest wall are outside it. 3D work happens only
    inside the box around the rib cage; the skin, fat and table are 2D masks repeated along z.
    """
    hu = np.full(grid.shape, AIR, np.float32)
    _, y2, x2 = grid.axes()
    _table(hu, body, x2, y2)
    centre_y, semi_x, semi_y, flat_y = body.outline
    skin = _ellipse(x2, y2 - centre_y, semi_x, semi_y) & (y2 < flat_y)
    inner = _ellipse(x2, y2 - centre_y, semi_x - body.fat, semi_y - body.fat) & (y2 < flat_y - body.fat)
    hu[:, skin[0]] = FAT + rng.normal(0, 8)
    hu[:, inner[0]] = MUSCLE
    lung = np.zeros(grid.shape, bool)
    cage_x, cage_y = semi_x - body.fat - body.muscle, 1.08 * body.lung_ay + body.rib_gap
    box = grid.box((-cage_x, -cage_y, grid.z[0]), (cage_x, cage_y, grid.z[-1]))
    if box is not None:
        _chest_cavity(hu[box], lung[box], body, grid, box, rng, cage_x, cage_y)
    stomach = (body.lung_cx * 0.9, -0.25 * body.lung_ay, body.dome_left - 28 * body.size)
    _ellipsoid_fill(hu, grid, stomach, (28, 22, 14), AIR)  # the gas bubble under the left dome
    solids = body.solids
    for centre, axes, value in solids.ellipsoids:
        box = _ellipsoid_fill(hu, grid, centre, axes, value)
        if box is not None:
            zz, yy, xx = grid.axes(box)
            lung[box] &= ellipsoid_level(xx, yy, zz, centre, axes) >= 1
    for tubes, value in solids.tubes:
        region, frac = tube_fraction(grid, tubes)
        blend(hu, region, frac, value)
        if region is not None:
            lung[region] &= frac < 0.5
    region, frac = tube_fraction(grid, airway_lumen(body))
    blend(hu, region, frac, AIR)
    _spine(hu, lung, body, grid)
    _sternum_and_ribs(hu, body, grid)
    return hu, lung


def _chest_cavity(
    hu, lung, body: Body, grid: Grid, box, rng: np.random.Generator, cage_x: float, cage_y: float
) -> None:
    """Inside the rib cage's box (views hu, lung): abdomen under the diaphragm, mediastinal fat, the lungs."""
    z, y, x = grid.axes(box)
    cage = _ellipse(x, y, cage_x, cage_y)  # (1, R, C)
    floor = body.diaphragm(x, y)  # (1, R, C)
    below = (z < floor) & cage
    hu[below] = LIVER
    hu[below & (x > 0)] = MUSCLE + 5  # spleen and stomach wall on the left
    mediastinum = cage & (np.abs(x) < body.mediastinum + 14 * body.size) & (y < body.spine_y)
    hu[mediastinum & (z > floor) & (z < body.lung_height)] = FAT + 10
    lung[...] = body.lung_shape(x, y, z)
    hu[lung] = _parenchyma(body, z, y, x, rng)[lung]


def _ellipse(x, y, a, b):
    return (x / a) ** 2 + (y / b) ** 2 < 1


def _ellipsoid_fill(hu, grid: Grid, centre, axes, value):
    """Set an axis-aligned ellipsoid to `value` inside its own box; returns the box (or None)."""
    c, a = np.asarray(centre, float), np.asarray(axes, float)
    box = grid.box(c - a, c + a)
    if box is not None:
        zz, yy, xx = grid.axes(box)
        hu[box][ellipsoid_level(xx, yy, zz, c, a) < 1] = value
    return box


def _parenchyma(body: Body, z, y, x, rng: np.random.Generator) -> np.ndarray:
    """Lung density on the broadcast axes z, y, x: the patient's base HU, +40 HU front to back, slow mottling.

    The mottling is a product of one cosine per axis (wavelength 40-90 mm), a separable field
    that costs two multiplications on the full grid.
    """
    field = body.lung_hu + 20.0 * np.clip(y / body.lung_ay, -1, 1)
    for _ in range(2):
        k = (2 * np.pi / rng.uniform(40, 90, size=3)).tolist()
        ph = rng.uniform(0, 2 * np.pi, size=3).tolist()
        field = field + rng.uniform(6, 12) * (np.cos(k[2] * z + ph[2]) * np.cos(k[1] * y + ph[1])) * np.cos(
            k[0] * x + ph[0]
        )
    return field


def _table(hu, body: Body, x, y) -> None:
    """The scanner couch: two thin carbon plates under the patient's back, 4 cm apart."""
    top = body.outline[3] + 2.0
    curve = 0.0006 * x**2  # the couch curves up a little at its sides
    plates = ((y > top - curve) & (y < top + 3 - curve)) | ((y > top + 38 - curve) & (y < top + 43 - curve))
    hu[:, (plates & (np.abs(x) < 210))[0]] = TABLE


def _spine(hu, lung, body: Body, grid: Grid) -> None:
    """Vertebrae (cortex, cancellous bone, discs every ~2.5 cm), canal, arch, spinous and transverse processes."""
    f = body.size
    sy = body.spine_y
    box = grid.box((-60 * f, sy - 25 * f, grid.z[0]), (60 * f, sy + 70 * f, grid.z[-1]))
    if box is None:
        return
    z, y, x = grid.axes(box)
    view = hu[box]
    lung[box] &= ~_ellipse(x, y - sy, *body.solids.spine)
    period = (body.lung_height + 40 * f) / 12
    phase = ((z - body.lung_height) % period) / period  # (I, 1, 1): where in its vertebra each slice is
    disc = phase > 0.8
    vertebra = _ellipse(x, y - sy, 19 * f, 16 * f)
    view[(vertebra & disc)] = DISC
    view[(vertebra & ~disc)] = CORTEX
    view[(_ellipse(x, y - sy, 16.5 * f, 13.5 * f) & ~disc)] = MARROW
    cy = sy + 25 * f  # spinal canal
    arch = _ellipse(x, y - cy, 14 * f, 13 * f) & (y > cy - 5 * f)
    spinous = _ellipse(x, y - (cy + 24 * f), 5 * f, 16 * f)
    transverse = _ellipse(np.abs(x) - 24 * f, y - (cy - 2 * f), 14 * f, 6 * f)
    # the arch and its processes sit at the upper part of each vertebra, not in every slice
    view[((arch | spinous) & (phase > 0.1) & (phase < 0.7))] = CORTEX - 150
    view[(transverse & (phase > 0.25) & (phase < 0.6))] = CORTEX - 150
    view[:, _ellipse(x, y - cy, 8 * f, 8 * f)[0]] = CSF


def _sternum_and_ribs(hu, body: Body, grid: Grid) -> None:
    """Sternum in front, 24 ribs with cortex and marrow, costal cartilage, and the clavicles."""
    f, H, ay = body.size, body.lung_height, body.lung_ay
    front = -(1.06 * ay + 10 * f)
    box = grid.box((-20 * f, front - 10 * f, 0.3 * H), (20 * f, front + 10 * f, 0.95 * H))
    if box is not None:
        z, y, x = grid.axes(box)
        view = hu[box]
        view[:, _ellipse(x, y - front, 14 * f, 6 * f)[0]] = CORTEX
        view[:, _ellipse(x, y - front, 11.5 * f, 3.5 * f)[0]] = MARROW
    bones, cartilage = [], []
    for pts, bone in rib_paths(body):
        seg_bone = bone[1:]  # a segment is cartilage if it ends in cartilage
        radius = np.full(len(pts), 5.0 * f)
        tubes = Tubes.polyline(pts, radius)
        bones.append(Tubes(tubes.a[seg_bone], tubes.b[seg_bone], tubes.r0[seg_bone], tubes.r1[seg_bone]))
        cartilage.append(
            Tubes(tubes.a[~seg_bone], tubes.b[~seg_bone], tubes.r0[~seg_bone] * 0.85, tubes.r1[~seg_bone] * 0.85)
        )
    for s in (-1, 1):
        clav = [
            (s * 14 * f, front, 0.96 * H),
            (s * (body.lung_cx + 0.4 * body.lung_ax), -0.55 * ay, H + 8 * f),
            (s * (body.lung_cx + body.lung_ax + 8 * f), -0.15 * ay, H + 20 * f),
        ]
        bones.append(Tubes.polyline(clav, [6.5 * f, 6 * f, 6 * f]))
    bone = Tubes.concat(bones)
    region, frac = tube_fraction(grid, Tubes.concat(cartilage))
    blend(hu, region, frac, CARTILAGE)
    region, frac = tube_fraction(grid, bone)
    blend(hu, region, frac, CORTEX)
    marrow = Tubes(bone.a, bone.b, bone.r0 - 1.8 * f, bone.r1 - 1.8 * f)
    region, frac = tube_fraction(grid, marrow, region)
    blend(hu, region, frac, MARROW)
