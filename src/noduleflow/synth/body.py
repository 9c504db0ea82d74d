"""One synthetic patient's chest as numbers: body outline, lungs, mediastinal organs, spine and ribs.

The patient frame is in mm: x towards the patient's left, y posterior, z superior (the LPS world
axes of ITK and LUNA16), with x = y = 0 on the lungs' centre line and z = 0 at the lowest lateral
lung point. Everything is analytic, so the same `lung_inside` decides both the rendered lung mask
and where nodules, vessels and candidates may go, without rendering anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from noduleflow.synth.shapes import Tubes, ellipsoid_level, sphere_directions


@dataclass(frozen=True)
class Body:
    """Shape parameters of one chest (all mm unless stated)."""

    lung_height: float  # H: z of the apices
    lung_ax: float  # lateral semi-axis of each lung's cross-section
    lung_ay: float  # antero-posterior semi-axis
    lung_power: float  # superellipse exponent of the cross-section (2 = ellipse, larger = boxier)
    mediastinum: float  # lungs start at |x| > this
    dome_right: float  # heights of the diaphragm domes above z = 0 (the liver lifts the right one)
    dome_left: float
    rib_gap: float  # room for the ribs between the lung surface and the chest-wall muscle
    muscle: float
    fat: float
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    size: float  # overall scale of the patient (1 = average)
    lung_hu: float  # parenchyma density, HU
    rib_drop: float  # how far each rib descends from the spine to the front
    rib_jitter: tuple[float, ...]  # mm up or down of each rib (right 1-12, left 1-12)

    @property
    def lung_cx(self) -> float:
        """|x| of each lung's centre: the medial edge is cut at `mediastinum`."""
        return self.mediastinum + 0.9 * self.lung_ax

    @property
    def hilum_x(self) -> float:
        """|x| of each hilum, where the bronchi and the vessel trees enter the lung."""
        return self.mediastinum + 24.0 * self.size

    @property
    def spine_y(self) -> float:
        """y of the vertebral bodies' centre: between the lungs, at their back."""
        return 0.74 * self.lung_ay

    @property
    def outline(self) -> tuple[float, float, float, float]:
        """(centre_y, semi_x, semi_y, flat_y) of the skin: an ellipse flattened where the back lies on the table."""
        wall = self.rib_gap + self.muscle + self.fat
        semi_x = self.lung_cx + 1.08 * self.lung_ax + wall
        front = 1.08 * self.lung_ay + wall
        back = front + 18.0 * self.size  # the back muscles and the spinous processes
        centre_y = (back - front) / 2
        semi_y = (back + front) / 2
        return centre_y, semi_x, semi_y, centre_y + 0.94 * semi_y

    @property
    def half_width(self) -> float:
        """Half the largest extent in the axial plane: what the field of view must hold."""
        centre_y, semi_x, semi_y, _ = self.outline
        return max(semi_x, semi_y + abs(centre_y))

    def lung_scale(self, z):
        """Cross-section scale of the lungs at height z: wider at the base, and the top 32% narrows like a dome to the apex."""
        H = self.lung_height
        u = np.clip((z - 0.68 * H) / (0.32 * H), 0.0, 1.0)
        return np.sqrt(np.clip(1.0 - u**2, 1e-6, None)) * (0.9 + 0.18 * np.clip(1.0 - z / H, 0.0, 1.0))

    def diaphragm(self, x, y):
        """z (mm) of the diaphragm under each point: a dome per lung, deepest in the posterior recess."""
        dome = np.where(x < 0, self.dome_right, self.dome_left)
        r2 = ((np.abs(x) - self.lung_cx) / self.lung_ax) ** 2 + (y / self.lung_ay) ** 2
        return dome * np.clip(1.0 - r2, 0.0, 1.0) ** 0.6 - 14.0 * self.size * np.clip(y / self.lung_ay, 0.0, 1.0) ** 2

    def lung_shape(self, x, y, z):
        """True inside either lung before the mediastinal organs are cut out; broadcasts."""
        s = self.lung_scale(z)
        ax, ay, p = self.lung_ax * s, self.lung_ay * s, self.lung_power
        level = np.abs((np.abs(x) - self.lung_cx) / ax) ** p + np.abs(y / ay) ** p
        return (level < 1.0) & (np.abs(x) > self.mediastinum) & (z > self.diaphragm(x, y)) & (z < self.lung_height)

    @cached_property
    def solids(self) -> Solids:
        return _solids(self)

    def lung_inside(self, xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """For points (N, 3) in mm: True where a ball of radius `margin` mm around the point is all lung.

        The ball is probed at its centre and 14 points on its surface; probes are tested only for
        points whose centre passed, which keeps rejection sampling cheap.
        """
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        inside = self._inside(xyz)
        if margin > 0 and inside.any():
            keep = np.flatnonzero(inside)
            probes = (xyz[keep, None, :] + margin * sphere_directions()).reshape(-1, 3)
            inside[keep] = self._inside(probes).reshape(len(keep), -1).all(axis=1)
        return inside

    def _inside(self, p: np.ndarray) -> np.ndarray:
        """Lung test for points (N, 3): the analytic shape minus the heart, hila, great vessels and spine."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        inside = self.lung_shape(x, y, z)
        solids = self.solids
        sx, sy = solids.spine
        inside &= ((x / sx) ** 2 + ((y - self.spine_y) / sy) ** 2) >= 1.0
        for centre, axes, _ in solids.ellipsoids:
            inside &= ellipsoid_level(x, y, z, centre, axes) >= 1.0
        keep = np.flatnonzero(inside)
        inside[keep] = ~solids.carve.contains(p[keep])
        return inside

    def sample_lung(self, rng: np.random.Generator, n: int, margin: float = 0.0) -> np.ndarray:
        """n points (n, 3) drawn uniformly from the lungs at least `margin` mm from their walls.

        Fewer than n only if 200 batches could not find them (a margin wider than the lungs allow).
        """
        batch = int(np.clip(8 * n, 256, 8192))  # the lungs fill about a third of their box
        H, half = self.lung_height, self.lung_cx + 1.1 * self.lung_ax
        lo = np.array([-half, -1.1 * self.lung_ay, -15.0 * self.size])
        hi = np.array([half, 1.1 * self.lung_ay, H])
        found, count = [], 0
        for _ in range(200):
            p = rng.uniform(lo, hi, size=(batch, 3))
            p = p[self.lung_inside(p, margin)]
            found.append(p)
            count += len(p)
            if count >= n:
                break
        return np.concatenate(found)[:n]


@dataclass(frozen=True)
class Solids:
    """The mediastinal organs that cut into the lungs, with their density in HU.

    ellipsoids: [(centre (3,), semi-axes (3,), hu)]; tubes: [(Tubes, hu)] filled in that order;
    carve: all tubes together, for inside/outside tests; spine: vertebral-body semi-axes (x, y)
    plus a margin, which also cut the lungs.
    """

    ellipsoids: list
    tubes: list
    carve: Tubes
    spine: tuple[float, float]


def _solids(b: Body) -> Solids:
    """Heart, hila, great vessels, trachea and main bronchi, placed relative to the lungs."""
    H, ay, m, f = b.lung_height, b.lung_ay, b.mediastinum, b.size
    hx = b.hilum_x
    zh = 0.54 * H
    heart_top = b.heart_centre[2] + 0.7 * b.heart_axes[2]
    hila = [((s * hx, 0.05 * ay, zh), (16 * f, 22 * f, 30 * f), 40.0) for s in (-1, 1)]
    ellipsoids = [(b.heart_centre, b.heart_axes, 40.0), *hila]
    aorta = Tubes.polyline(
        [
            (6 * f, -0.25 * ay, heart_top - 10),
            (2 * f, -0.28 * ay, 0.72 * H),
            (8 * f, -0.05 * ay, 0.8 * H),
            (20 * f, b.spine_y - 28 * f, 0.74 * H),
            (22 * f, b.spine_y - 24 * f, 0.45 * H),
            (14 * f, b.spine_y - 26 * f, -60.0),
        ],
        np.array([14, 14, 13, 12, 11, 11]) * f,
    )
    trunk = (14 * f, -0.1 * ay, 0.57 * H)
    pulmonary = Tubes.concat(
        [
            Tubes.polyline([(20 * f, -0.45 * ay, heart_top - 15), trunk], [13 * f, 13 * f]),
            Tubes.polyline([trunk, (hx, 0.0, zh + 4)], [10 * f, 9 * f]),
            Tubes.polyline([trunk, (-hx, 0.0, zh + 4)], [10 * f, 9 * f]),
        ]
    )
    veins = Tubes.concat(
        [
            Tubes.polyline([(8 * f, 0.1 * ay, b.heart_centre[2] + 15), (s * hx, 0.15 * ay, 0.42 * H)], [7 * f, 6 * f])
            for s in (-1, 1)
        ]
    )
    svc = Tubes.polyline([(-24 * f, -0.2 * ay, 0.86 * H), (-20 * f, -0.22 * ay, heart_top)], [9 * f, 9 * f])
    carina = (0.0, 0.12 * ay, 0.6 * H)
    airway = Tubes.concat(
        [
            Tubes.polyline([(0.0, 0.02 * ay, 1.6 * H), carina], [10 * f, 10 * f]),
            *(
                Tubes.polyline(
                    [carina, (s * (m + 4 * f), 0.14 * ay, 0.56 * H), (s * hx, 0.1 * ay, zh)], [7 * f, 7 * f, 6 * f]
                )
                for s in (-1, 1)
            ),
        ]
    )
    tubes = [(aorta, 40.0), (pulmonary, 40.0), (veins, 40.0), (svc, 40.0), (airway, 40.0)]
    carve = Tubes.concat([t for t, _ in tubes])
    spine = (19 * f + 4, 16 * f + 4)
    return Solids(ellipsoids, tubes, carve, spine)


def airway_lumen(b: Body) -> Tubes:
    """The air inside the trachea and main bronchi: the airway tubes 2 mm thinner than their walls."""
    t = b.solids.tubes[-1][0]
    return Tubes(t.a, t.b, t.r0 - 2.0 * b.size, t.r1 - 2.0 * b.size)


def rib_paths(b: Body) -> list[tuple[np.ndarray, np.ndarray]]:
    """12 ribs per side as polylines (P, 3) mm with a flag per point: bone (True) or costal cartilage.

    Each rib leaves the spine at the back, hugs the lung surface around the side and descends
    towards the front; the upper seven reach the sternum through cartilage, the lowest are short.
    """
    H, f = b.lung_height, b.size
    step = (H + 10 * f) / 11.5
    ribs = []
    for side in (-1, 1):
        for k in range(12):
            z0 = H - 6 * f - k * step + b.rib_jitter[(side > 0) * 12 + k]
            end = (-112.0 if k < 7 else -80.0 + 12 * (k - 7)) if k < 10 else 10.0
            phi = np.radians(np.linspace(100.0, end, 16))
            progress = (100.0 - np.degrees(phi)) / 212.0
            z = z0 - b.rib_drop * (1.0 + 0.02 * k) * progress
            s = b.lung_scale(z)
            p = b.lung_power
            off = 6.5 * f
            x = side * (b.lung_cx + (b.lung_ax * s * np.abs(np.cos(phi)) ** (2 / p) + off) * np.sign(np.cos(phi)))
            y = (b.lung_ay * s * np.abs(np.sin(phi)) ** (2 / p) + off) * np.sign(np.sin(phi))
            head = [
                (side * 14 * f, b.spine_y + 12 * f, z0 + 4),
                (side * (b.mediastinum + 12 * f), b.lung_ay * b.lung_scale(z0) + 8 * f, z0 + 2),
            ]
            pts = np.vstack([head, np.column_stack([x, y, z])])
            bone = np.ones(len(pts), bool)
            if k < 7:  # cartilage from the end of the bone to the sternum's edge
                bone[-4:] = False
                pts[-1] = (side * 13 * f, -(1.06 * b.lung_ay + 6 * f), z[-1] + 4)
            ribs.append((pts, bone))
    return ribs


def sample_body(rng: np.random.Generator) -> Body:
    """One patient: sizes vary about ±12% overall and each part a little on its own, as between people."""
    f = rng.uniform(0.88, 1.12)
    ay = rng.uniform(72, 86) * f
    dome_r = rng.uniform(45, 68) * f
    dome_l = dome_r - rng.uniform(5, 20) * f
    heart_axes = tuple(float(v) for v in np.array([rng.uniform(62, 74), rng.uniform(46, 56), rng.uniform(46, 56)]) * f)
    return Body(
        lung_height=rng.uniform(225, 265) * f,
        lung_ax=rng.uniform(58, 70) * f,
        lung_ay=ay,
        lung_power=rng.uniform(2.1, 2.5),
        mediastinum=rng.uniform(7, 12) * f,
        dome_right=dome_r,
        dome_left=dome_l,
        rib_gap=rng.uniform(10, 12) * f,
        muscle=rng.uniform(6, 12) * f,
        fat=rng.uniform(4, 24),
        heart_centre=(rng.uniform(22, 34) * f, -0.3 * ay, dome_l + rng.uniform(22, 34) * f),
        heart_axes=heart_axes,
        size=f,
        lung_hu=rng.uniform(-880, -835),
        rib_drop=rng.uniform(80, 105) * f,
        rib_jitter=tuple(rng.normal(0, 1.5, 24).tolist()),
    )
