"""Pulmonary vessel trees: the main source of false positives, since a vessel cut across looks like a nodule.

Each lung gets an arterial and a venous tree grown from its hilum towards a few hundred targets
spread through the lung. A tree is built top-down: the branch carrying a set of targets runs from
its parent part of the way to their centroid, then the set is split in two across its longest
side, unevenly, and each half grows on. Radii follow Murray's law loosely (r ~ n**0.4 for a branch
feeding n targets, at most 5 mm), so vessels are about 1 cm wide at the hilum and taper to 1-2 mm
at the periphery, and every branching point is a real bifurcation with a known position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.synth.body import Body
from noduleflow.synth.shapes import Tubes


@dataclass(frozen=True)
class VesselTree:
    """All vessel segments of one chest (patient frame, mm) and the bifurcation points (B, 3)."""

    tubes: Tubes
    bifurcations: np.ndarray

    def distance(self, xyz: np.ndarray, min_radius: float = 0.0) -> np.ndarray:
        """Signed distance (N,) mm from points (N, 3) to the surface of vessels at least `min_radius` mm wide."""
        keep = np.maximum(self.tubes.r0, self.tubes.r1) >= min_radius
        t = Tubes(self.tubes.a[keep], self.tubes.b[keep], self.tubes.r0[keep], self.tubes.r1[keep])
        return t.point_distance(xyz)


def grow_vessels(body: Body, rng: np.random.Generator, targets_per_lung: int = 1200) -> VesselTree:
    """Two trees (artery, vein) per lung, rooted at the hilum, ending at targets at least 4 mm inside the lung."""
    H, ay, f = body.lung_height, body.lung_ay, body.size
    hx = body.hilum_x
    points = body.sample_lung(rng, 3 * targets_per_lung, margin=4.0)
    r_end = rng.uniform(0.6, 0.8)
    parts: list[Tubes] = []
    forks: list[np.ndarray] = []
    for side in (-1, 1):
        own = points[side * points[:, 0] > 0][:targets_per_lung]
        artery = rng.random(len(own)) < 0.55
        roots = ((side * (hx + 10 * f), 0.0, 0.54 * H + 4), (side * (hx + 8 * f), 0.15 * ay, 0.42 * H))
        for root, chosen in zip(roots, (artery, ~artery)):
            if chosen.sum() == 0:
                continue
            tubes, nodes = _grow(np.asarray(root, float), own[chosen], r_end, rng)
            parts.append(tubes)
            forks.append(nodes)
    return VesselTree(Tubes.concat(parts), np.concatenate(forks))


def _grow(root: np.ndarray, targets: np.ndarray, r_end: float, rng: np.random.Generator) -> tuple[Tubes, np.ndarray]:
    """Grow one tree from root (3,) to targets (n, 3); returns its segments and its bifurcation points."""
    a, b, r0, r1, nodes = [], [], [], [], []
    reach = rng.uniform(0.3, 0.55, len(targets))  # how far towards its targets' centroid each branch runs
    split = rng.uniform(0.3, 0.7, len(targets))  # the share of targets the first child takes
    stack = [(root, targets)]
    while stack:
        start, pts = stack.pop()
        n = len(pts)
        radius = min(r_end * n**0.4, 5.0)  # lobar arteries are about 1 cm wide; wider ones stay in the hilum
        if n == 1:
            a.append(start), b.append(pts[0]), r0.append(radius * 1.1), r1.append(radius * 0.9)
            continue
        j = len(nodes)
        node = start + reach[j] * (pts.sum(axis=0) / n - start)
        a.append(start), b.append(node), r0.append(radius), r1.append(radius * 0.94)
        nodes.append(node)
        order = pts[:, (pts.max(axis=0) - pts.min(axis=0)).argmax()].argsort()  # split across the longest side
        k = min(max(int(n * split[j] + 0.5), 1), n - 1)
        stack.append((node, pts[order[:k]]))
        stack.append((node, pts[order[k:]]))
    tubes = Tubes(np.array(a), np.array(b), np.array(r0), np.array(r1))
    return tubes, np.array(nodes).reshape(-1, 3)
