"""Lung nodules: what they look like, how malignant they are, and how they are drawn.

A nodule is a union of ellipsoidal blobs (one for a smooth nodule, several for a lobulated one)
plus thin tapering spicules, designed at unit size and then scaled so that its volume equals a
sphere of the sampled diameter: the annotated `diameter_mm` is exactly the equivalent-sphere
diameter, and the annotated centre is the design's centre. Densities (HU): solid 10..60,
ground-glass -650..-350, part-solid a ground-glass halo around a solid core, calcified with
central, popcorn or diffuse calcium at 250..900.

Malignancy follows the look of the nodule, as radiologists' ratings in LIDC do: the log-odds grow
with size and are raised for spiculated, part-solid and lobulated nodules and lowered for
calcified ones; per-nodule noise makes the classes overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from noduleflow.synth.shapes import Grid, Tubes

KINDS = ("solid", "ground-glass", "part-solid", "calcified", "lobulated", "spiculated")
SITES = ("isolated", "juxta-pleural", "juxta-vascular")
# per kind: (count range, radius range, distance range) of the spheres added to the main blob, in units of its radius
_BUMPS = ((2, 5), (0.25, 0.4), (0.6, 0.8))
_LOBES = {
    "solid": (_BUMPS,),
    "lobulated": (((3, 6), (0.45, 0.65), (0.45, 0.65)), ((1, 3), (0.25, 0.4), (0.6, 0.8))),
    "ground-glass": (((3, 7), (0.3, 0.5), (0.5, 0.75)),),
    "part-solid": (((2, 5), (0.3, 0.5), (0.5, 0.7)),),
    "spiculated": (_BUMPS,),
}
_MALIGNANCY_SHIFT = {
    "solid": 0.0,
    "ground-glass": 0.3,
    "part-solid": 1.5,
    "calcified": -3.5,
    "lobulated": 1.0,
    "spiculated": 2.2,
}


@dataclass(frozen=True, eq=False)
class Nodule:
    """One nodule or small finding in the patient frame (mm, X Y Z).

    blob_centres (B, 3) and blob_maps (B, 3, 3): a point p is in blob i when
    |blob_maps[i] @ (p - centre - blob_centres[i])| < 1; blob_radii (B,) turn that level into mm.
    spicules are relative to `centre`; calcifications are spheres (K, 3) + radii (K,).
    core is the part-solid core's size relative to the whole (0: no core).
    """

    centre: np.ndarray
    diameter_mm: float
    kind: str
    site: str
    malignant: bool
    p_malignant: float
    blob_centres: np.ndarray
    blob_maps: np.ndarray
    blob_radii: np.ndarray
    spicules: Tubes
    calc_centres: np.ndarray
    calc_radii: np.ndarray
    core: float
    hu: float
    core_hu: float
    calc_hu: float
    texture_seed: int

    @property
    def extent(self) -> float:
        """Radius (mm) of a ball about the centre that holds the whole nodule, spicules included."""
        longest = 1.0 / np.linalg.svd(self.blob_maps, compute_uv=False).min(axis=1)  # longest semi-axis per blob
        reach = np.linalg.norm(self.blob_centres, axis=1) + longest
        if len(self.spicules):
            reach = np.concatenate([reach, np.linalg.norm(self.spicules.b, axis=1) + self.spicules.r1])
        return float(reach.max())

    def moved(self, centre) -> Nodule:
        return replace(self, centre=np.asarray(centre, float))

    def level(self, x, y, z, shrink: float = 1.0) -> np.ndarray:
        """Approximate signed distance (mm, < 0 inside) from points (relative to the centre) to the blobs.

        shrink < 1 gives the part-solid core: the same blobs scaled about the centre.
        """
        best = None
        for c, m, r in zip(
            (self.blob_centres * shrink).tolist(),
            (self.blob_maps / shrink).tolist(),
            (self.blob_radii * shrink).tolist(),
        ):
            dx, dy, dz = x - c[0], y - c[1], z - c[2]  # Python floats keep float32 grids float32
            q2 = sum((m[j][0] * dx + m[j][1] * dy + m[j][2] * dz) ** 2 for j in range(3))
            lv = (np.sqrt(q2) - 1.0) * r
            best = lv if best is None else np.minimum(best, lv)
        return best


def sample_diameter(rng: np.random.Generator) -> float:
    """Equivalent diameter (mm) of an annotated nodule: log-normal around 7 mm, kept within 3..30 mm as LUNA16's."""
    while True:
        d = float(np.exp(rng.normal(np.log(7.0), 0.55)))
        if 3.2 <= d <= 30.0:
            return d


def sample_kind(rng: np.random.Generator, diameter: float) -> str:
    """Kind given size: small nodules are more often calcified, large ones more often spiculated or part-solid."""
    w = {
        "solid": 0.38,
        "ground-glass": 0.12,
        "part-solid": 0.1 if diameter >= 6 else 0.02,
        "calcified": 0.16 if diameter < 10 else 0.04,
        "lobulated": 0.14,
        "spiculated": 0.04 if diameter < 8 else 0.2,
    }
    p = np.array([w[k] for k in KINDS])
    return str(KINDS[rng.choice(len(KINDS), p=p / p.sum())])


def malignancy_log_odds(diameter: float, kind: str, site: str) -> float:
    """The noiseless log-odds of malignancy of a nodule of `diameter` (mm), `kind` and `site`.

    Linear in log-size, shifted by kind, lowered against the pleura. `malignancy` adds N(0, 0.7)
    noise before drawing the label, so this score is the best any model of the nodule's look can do:
    its ROC AUC is the ceiling a learned malignancy model is measured against.
    """
    pleural = 0.4 if site == "juxta-pleural" else 0.0
    return float(-1.3 + 2.2 * np.log(diameter / 10.0) + _MALIGNANCY_SHIFT[kind] - pleural)


def malignancy(rng: np.random.Generator, diameter: float, kind: str, site: str) -> tuple[bool, float]:
    """(malignant, probability): logistic in log-size and kind, with noise so that the classes overlap."""
    logit = malignancy_log_odds(diameter, kind, site)
    p = float(1.0 / (1.0 + np.exp(-(logit + rng.normal(0.0, 0.7)))))
    return bool(rng.random() < p), p


def design(
    rng: np.random.Generator,
    diameter: float,
    kind: str,
    site: str = "isolated",
    malignant: bool = False,
    p_malignant: float = 0.0,
) -> Nodule:
    """A nodule of `kind` at the origin whose volume equals a sphere of `diameter` mm."""
    rot = Rotation.random(random_state=rng).as_matrix()
    stretch = {"ground-glass": 0.2, "part-solid": 0.18, "calcified": 0.06}.get(kind, 0.13)
    axes = 1.0 + rng.uniform(-stretch, stretch, 3)
    centres, radii, maps = [np.zeros(3)], [float(axes.mean())], [np.diag(1 / axes) @ rot.T]
    if kind == "lobulated":
        maps[0], radii[0] = maps[0] / 0.8, radii[0] * 0.8
    for count, size, dist in _LOBES.get(kind, ()):  # lobes and bumps: spheres that make the outline irregular
        for _ in range(rng.integers(*count)):
            r = rng.uniform(*size)
            centres.append(_unit(rng) * rng.uniform(*dist)), radii.append(r), maps.append(np.eye(3) / r)
    spicules = Tubes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    if kind == "spiculated":  # thin strands radiating into the lung, thinning to their tips
        u = np.array([_unit(rng) for _ in range(rng.integers(10, 21))])
        ends = u * rng.uniform(1.4, 2.6, (len(u), 1)) + rng.normal(0, 0.2, u.shape)
        spicules = Tubes(0.8 * u, ends, np.full(len(u), 0.2), np.full(len(u), 0.05))
    calc_c, calc_r = np.zeros((0, 3)), np.zeros(0)
    if kind == "calcified":
        pattern = rng.choice(["central", "popcorn", "diffuse"])
        if pattern == "popcorn":
            n = rng.integers(4, 8)
            calc_c = np.array([_unit(rng) * rng.uniform(0.0, 0.55) for _ in range(n)])
            calc_r = rng.uniform(0.15, 0.3, n)
        else:
            calc_c, calc_r = np.zeros((1, 3)), np.array([0.45 if pattern == "central" else 0.97])
    hu = {"ground-glass": rng.uniform(-650, -350), "part-solid": rng.uniform(-600, -400)}.get(kind, rng.uniform(10, 60))
    unit = Nodule(
        np.zeros(3),
        diameter,
        kind,
        site,
        malignant,
        p_malignant,
        np.array(centres),
        np.array(maps),
        np.array(radii),
        spicules,
        calc_c,
        calc_r,
        rng.uniform(0.35, 0.6) if kind == "part-solid" else 0.0,
        float(hu),
        float(rng.uniform(0, 50)),
        float(rng.uniform(250, 900)),
        int(rng.integers(2**31)),
    )
    k = (diameter / 2.0) / _equivalent_radius(unit)
    return replace(
        unit,
        blob_centres=unit.blob_centres * k,
        blob_maps=unit.blob_maps / k,
        blob_radii=unit.blob_radii * k,
        spicules=Tubes(spicules.a * k, spicules.b * k, spicules.r0 * k, spicules.r1 * k),
        calc_centres=calc_c * k,
        calc_radii=calc_r * k,
    )


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _equivalent_radius(nodule: Nodule, n: int = 40) -> float:
    """Radius of the sphere with the nodule's volume, measured on an n**3 grid with anti-aliased edges."""
    ext = nodule.extent * 1.05
    ax = np.linspace(-ext, ext, n)
    step = ax[1] - ax[0]
    frac = _occupancy(nodule, ax[:, None, None], ax[None, :, None], ax[None, None, :], step)
    return float((3 * frac.sum() * step**3 / (4 * np.pi)) ** (1 / 3))


def _occupancy(nodule: Nodule, z, y, x, soft: float, shrink: float = 1.0) -> np.ndarray:
    """Anti-aliased occupancy in [0, 1] of blobs and spicules at points relative to the centre."""
    lv = nodule.level(x, y, z, shrink)
    if len(nodule.spicules) and shrink == 1.0:
        lv = np.minimum(lv, nodule.spicules.distance(x, y, z))
    return np.clip(0.5 - lv / soft, 0.0, 1.0).astype(np.float32)


def render_nodule(hu: np.ndarray, grid: Grid, nodule: Nodule) -> None:
    """Draw `nodule` into hu (I, R, C) in place, inside its own box; bone (> 150 HU) is never painted over.

    The density carries a little smooth texture (seeded by the nodule, so re-rendering gives the
    same bytes): about ±10 HU in solid parts and ±35 HU in ground glass.
    """
    reach = nodule.extent + 2 * grid.soft
    box = grid.box(nodule.centre - reach, nodule.centre + reach)
    if box is None:
        return
    z, y, x = grid.axes(box)
    cx, cy, cz = nodule.centre.tolist()
    z, y, x = z - cz, y - cy, x - cx
    soft_tissue = hu[box] < 150.0
    frac = _occupancy(nodule, z, y, x, grid.soft) * soft_tissue
    rng = np.random.default_rng(nodule.texture_seed)
    texture = gaussian_filter(rng.standard_normal(frac.shape).astype(np.float32), 1.0) * 6.7  # about unit std
    glass = nodule.kind in ("ground-glass", "part-solid")
    view = hu[box]
    view += (nodule.hu + texture * (35.0 if glass else 10.0) - view) * frac
    if nodule.core > 0:
        core = _occupancy(nodule, z, y, x, grid.soft, nodule.core) * soft_tissue
        view += (nodule.core_hu + texture * 10.0 - view) * core
    if len(nodule.calc_radii):
        lv = np.full(frac.shape, np.inf, np.float32)
        for c, r in zip(nodule.calc_centres.tolist(), nodule.calc_radii.tolist()):
            lv = np.minimum(lv, np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r)
        calc = np.clip(0.5 - lv / grid.soft, 0.0, 1.0) * frac
        view += (nodule.calc_hu - view) * calc
