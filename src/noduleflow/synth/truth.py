"""What the generator knows about each annotated nodule and a CSV does not say: its kind, site and
noiseless malignancy log-odds.

`nodule_labels` and `nodule_log_odds` re-plan the scans (no voxels, a fraction of a second each) and
match every annotation to the planned nodule whose LUNA16 centre it is, so a metric can be broken
down by kind (solid, ground-glass, ...) and site (isolated, juxta-pleural, juxta-vascular), and a
malignancy AUC can be set against the ceiling that the generator's label noise leaves.
The log-odds are a separate list, not a third label: a label is a group to break a metric down by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from noduleflow.data.luna16 import Nodule
from noduleflow.synth.nodules import Nodule as PlannedNodule
from noduleflow.synth.nodules import malignancy_log_odds
from noduleflow.synth.plan import plan_scan, series_uid

MATCH_MM = 0.5  # an annotation is its planned nodule's centre, written with 4 decimals


def nodule_labels(
    nodules: Sequence[Nodule], *, seed: int, scans: int, size: str = "small", scale: float = 1.0
) -> list[dict[str, str]]:
    """{"kind": ..., "site": ...} for each of `nodules`, annotations of `synthesize(seed=seed, size=size)`.

    scans: how many scans that run wrote (their series uids are looked up by index). A nodule of
    another series, or with no planned nodule within MATCH_MM, gets {"kind": "unknown", "site": "unknown"}.
    """
    return [
        {"kind": "unknown", "site": "unknown"} if p is None else {"kind": p.kind, "site": p.site}
        for p in _planned(nodules, seed, scans, size, scale)
    ]


def nodule_log_odds(
    nodules: Sequence[Nodule], *, seed: int, scans: int, size: str = "small", scale: float = 1.0
) -> np.ndarray:
    """(N,) noiseless malignancy log-odds (`synth.nodules.malignancy_log_odds`) of each of `nodules`.

    Arguments as `nodule_labels`; a nodule it cannot match gets NaN. The generator drew each label
    from these log-odds plus N(0, 0.7) noise, so their ROC AUC is the best a malignancy model can reach.
    """
    return np.array(
        [
            math.nan if p is None else malignancy_log_odds(p.diameter_mm, p.kind, p.site)
            for p in _planned(nodules, seed, scans, size, scale)
        ],
        dtype=np.float64,
    )


def _planned(nodules: Sequence[Nodule], seed: int, scans: int, size: str, scale: float) -> list[PlannedNodule | None]:
    """The planned nodule whose centre each annotation is (within MATCH_MM), or None."""
    index = {series_uid(seed, i, size): i for i in range(scans)}
    plans: dict[str, tuple[np.ndarray, list]] = {}
    found: list[PlannedNodule | None] = []
    for nodule in nodules:
        i = index.get(nodule.series_uid)
        if i is None:
            found.append(None)
            continue
        if nodule.series_uid not in plans:
            plan = plan_scan(seed, i, size, scale)
            centres = plan.world(np.array([n.centre for n in plan.nodules]).reshape(-1, 3))
            plans[nodule.series_uid] = (centres, plan.nodules)
        centres, planned = plans[nodule.series_uid]
        distance = np.linalg.norm(centres - np.asarray(nodule.center_xyz), axis=1) if len(planned) else np.array([])
        found.append(planned[int(distance.argmin())] if len(distance) and distance.min() <= MATCH_MM else None)
    return found
