"""The LUNA16 hit rule, defined once: a point hits a finding when it lies closer to the finding's
centre than the finding's radius (strictly: a point at exactly the radius is a miss).

This is the rule of the challenge's evaluation script, `noduleCADEvaluationLUNA16.py` (its
`evaluateCAD`: ``dist = (x - x2)**2 + (y - y2)**2 + (z - z2)**2`` then ``if dist < radiusSquared``,
with ``diameter = 10.0`` when the CSV gives a negative one). Scoring (`metrics.froc`), the
candidates' nodule diameters and excluded findings (`data.luna16`), mined candidate labels
(`recipes.mining`) and the malignancy join of `evaluate` all use it, so that a mark the FROC counts
as a hit is also what training calls a positive.

Distances are squared and summed x, then y, then z, in float64, as the script does, so that a point
on the boundary is decided the same way bit for bit.
"""

from __future__ import annotations

import numpy as np

UNKNOWN_DIAMETER_MM = 10.0
"""Diameter read for a finding stored with a negative one (-1: size unknown, in annotations_excluded.csv), as the LUNA16 evaluation does."""


def radius_sq(diameter_mm) -> np.ndarray:
    """(F,) diameters in mm -> (F,) squared radii in mm^2; a negative diameter reads as UNKNOWN_DIAMETER_MM."""
    diameter = np.asarray(diameter_mm, dtype=np.float64).reshape(-1)
    diameter = np.where(diameter < 0, UNKNOWN_DIAMETER_MM, diameter)
    return (diameter / 2.0) ** 2


def sq_dist(centres_xyz, points_xyz) -> np.ndarray:
    """(F, 3) and (M, 3) mm -> (F, M) squared distances in mm^2, summed x, y, z in the script's order."""
    centres = np.asarray(centres_xyz, dtype=np.float64).reshape(-1, 3)
    points = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    d = centres[:, None, :] - points[None, :, :]
    return d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2


def hits(centres_xyz, diameter_mm, points_xyz) -> np.ndarray:
    """(F, 3) finding centres in mm, (F,) diameters in mm, (M, 3) points in mm -> (F, M) bool:
    whether each point hits each finding (squared distance < squared radius, module docstring)."""
    return sq_dist(centres_xyz, points_xyz) < radius_sq(diameter_mm)[:, None]
