"""Candidate points as a LUNA16 candidate detector would list them: mostly hard negatives, a few hits.

Negatives sit where a detector is fooled: on vessels 1-10 mm wide (cut across, a vessel looks
like a nodule), on bifurcations, on the lung wall, and a few in plain parenchyma. Every
annotated nodule gets one to three class-1 points within a quarter of its radius of the centre,
and every small excluded finding one class-0 point, as in LUNA16 where those are not nodules.
"""

from __future__ import annotations

import numpy as np

from noduleflow.synth.body import Body
from noduleflow.synth.nodules import Nodule
from noduleflow.synth.vessels import VesselTree


def sample_candidates(
    body: Body, tree: VesselTree, nodules: list[Nodule], excluded: list[Nodule], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (N, 3) mm in the patient frame, class (N,) int 0/1), shuffled; a few hundred negatives."""
    n_neg = int(rng.integers(250, 451))
    shares = {"vessel": 0.55, "fork": 0.2, "wall": 0.2, "lung": 0.05}
    parts = [
        _on_vessels(tree, rng, int(2 * shares["vessel"] * n_neg)),
        _jitter(rng, tree.bifurcations[rng.permutation(len(tree.bifurcations))][: int(2 * shares["fork"] * n_neg)]),
        _on_wall(body, rng, int(2 * shares["wall"] * n_neg)),
        body.sample_lung(rng, int(2 * shares["lung"] * n_neg) + 1),
    ]
    negatives = []
    for part, share in zip(parts, shares.values()):
        part = part[body.lung_inside(part)]
        for n in nodules:
            part = part[np.linalg.norm(part - n.centre, axis=1) > n.extent + 3.0]
        for n in excluded:
            part = part[np.linalg.norm(part - n.centre, axis=1) > n.extent + 2.0]
        negatives.append(part[: int(round(share * n_neg))])
    for n in excluded:
        negatives.append(_jitter(rng, n.centre[None], 0.3))
    positives = [n.centre + _ball(rng, rng.integers(1, 4), 0.25 * n.diameter_mm / 2) for n in nodules]
    xyz = np.concatenate(negatives + positives + [np.zeros((0, 3))])
    cls = np.concatenate([np.zeros(sum(map(len, negatives)), np.int64), np.ones(sum(map(len, positives)), np.int64)])
    order = rng.permutation(len(cls))
    return xyz[order], cls[order]


def _on_vessels(tree: VesselTree, rng: np.random.Generator, n: int) -> np.ndarray:
    """n points along vessels 1-10 mm wide, more on long and wide ones, jittered by about a millimetre."""
    t = tree.tubes
    radius = 0.5 * (t.r0 + t.r1)
    w = np.linalg.norm(t.b - t.a, axis=1) * ((radius >= 0.5) & (radius <= 5.0)) * np.sqrt(radius)
    k = rng.choice(len(w), n, p=w / w.sum())
    return _jitter(rng, t.a[k] + rng.uniform(0, 1, (n, 1)) * (t.b[k] - t.a[k]))


def _on_wall(body: Body, rng: np.random.Generator, n: int) -> np.ndarray:
    """n points in the lung within 4 mm of its wall (pleura, diaphragm, mediastinum)."""
    pts = body.sample_lung(rng, 4 * n, margin=0.5)
    return pts[~body.lung_inside(pts, margin=4.0)][:n]


def _jitter(rng: np.random.Generator, pts: np.ndarray, sd: float = 0.8) -> np.ndarray:
    return pts + rng.normal(0.0, sd, pts.shape)


def _ball(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """n offsets (n, 3) uniform in a ball of `radius` mm; the first is within a fifth of it."""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)
    r[0] = min(r[0, 0], 0.2 * radius)
    return v * r
