"""Where nodules and small findings go: in the lung, alone, on the pleura, or against a vessel.

Placement is analytic (`Body.lung_inside`, `VesselTree.distance`), so the ground truth of a scan
is known before a voxel is drawn. Nodules never overlap each other; isolated ones keep clear of
vessels wider than 1 mm; juxta-pleural ones have their centre inside the lung but reach the wall;
juxta-vascular ones touch a 2-7 mm wide vessel.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from noduleflow.synth.body import Body
from noduleflow.synth.nodules import SITES, Nodule, design, malignancy, sample_diameter, sample_kind
from noduleflow.synth.vessels import VesselTree

_SITE_P = (0.55, 0.25, 0.2)
_COUNT_P = (0.1, 0.35, 0.3, 0.17, 0.08)  # 0..4 nodules per scan, mostly 1-3


def place_nodules(body: Body, tree: VesselTree, rng: np.random.Generator, count: int | None = None) -> list[Nodule]:
    """`count` (default: drawn, 0-4) annotated nodules of 3-30 mm, with malignancy drawn from their look and site."""
    if count is None:
        count = int(rng.choice(len(_COUNT_P), p=_COUNT_P))
    placed: list[Nodule] = []
    for _ in range(count):
        d = sample_diameter(rng)
        kind = sample_kind(rng, d)
        nodule = design(rng, d, kind)
        centre, site = _position(body, tree, rng, nodule, str(rng.choice(SITES, p=_SITE_P)), placed)
        if centre is None:
            continue
        malignant, p = malignancy(rng, d, kind, site)
        placed.append(replace(nodule, centre=centre, site=site, malignant=malignant, p_malignant=p))
    return placed


def place_excluded(body: Body, tree: VesselTree, rng: np.random.Generator, nodules: list[Nodule]) -> list[Nodule]:
    """A few findings under 3 mm (solid or calcified), which LUNA16 lists apart and FROC ignores."""
    found: list[Nodule] = []
    for _ in range(int(min(rng.poisson(2.0), 5))):
        d = float(rng.uniform(1.2, 2.9))
        nodule = design(rng, d, "calcified" if rng.random() < 0.3 else "solid")
        centre, _ = _position(body, tree, rng, nodule, "isolated", nodules + found)
        if centre is not None:
            found.append(nodule.moved(centre))
    return found


def _position(body: Body, tree: VesselTree, rng: np.random.Generator, nodule: Nodule, site: str, others: list[Nodule]):
    """(centre (3,), site) for `nodule` at `site`, falling back to an isolated spot; (None, site) if the lung is full."""
    reach, r = nodule.extent, nodule.diameter_mm / 2
    for attempt in (site, "isolated"):
        for _ in range(8):  # small batches: most first tries succeed, and each costs a vessel-distance pass
            if attempt == "juxta-pleural":
                pts = body.sample_lung(rng, 64, margin=0.5 * r)
                pts = pts[~body.lung_inside(pts, margin=1.05 * r)]
                pts = pts[tree.distance(pts, min_radius=1.5) > reach]
            elif attempt == "juxta-vascular":
                pts = _beside_vessels(tree, rng, r, 64)
                pts = pts[body.lung_inside(pts, margin=0.9 * r + 1.0)]
            else:
                pts = body.sample_lung(rng, 16, margin=reach + 2.0)
                pts = pts[tree.distance(pts, min_radius=1.0) > reach + 1.0]
            for p in pts:
                if all(np.linalg.norm(p - o.centre) > reach + o.extent + 3.0 for o in others):
                    return p, attempt
    return None, site


def _beside_vessels(tree: VesselTree, rng: np.random.Generator, r: float, n: int = 256) -> np.ndarray:
    """n points (n, 3) whose ball of radius r just touches the side of a 2-7 mm wide vessel."""
    t = tree.tubes
    radius = 0.5 * (t.r0 + t.r1)
    pick = np.flatnonzero((radius >= 1.0) & (radius <= 3.5))
    if len(pick) == 0:
        return np.zeros((0, 3))
    k = rng.choice(pick, n)
    along = t.b[k] - t.a[k]
    q = t.a[k] + rng.uniform(0.2, 0.8, (n, 1)) * along
    side = rng.normal(size=(n, 3))
    side -= (np.sum(side * along, axis=1) / np.maximum(np.sum(along * along, axis=1), 1e-9))[:, None] * along
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    return q + side * (radius[k] + 0.8 * r)[:, None]
