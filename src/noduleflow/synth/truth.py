"""What the generator knows about each annotated nodule and a CSV does not say: its kind and site.

`nodule_labels` re-plans the scans (no voxels, a fraction of a second each) and matches every
annotation to the planned nodule whose LUNA16 centre it is, so a metric can be broken down by
kind (solid, ground-glass, ...) and site (isolated, juxta-pleural, juxta-vascular).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noduleflow.data.luna16 import Nodule
from noduleflow.synth.plan import plan_scan, series_uid

MATCH_MM = 0.5  # an annotation is its planned nodule's centre, written with 4 decimals


def nodule_labels(
    nodules: Sequence[Nodule], *, seed: int, scans: int, size: str = "small", scale: float = 1.0
) -> list[dict[str, str]]:
    """{"kind": ..., "site": ...} for each of `nodules`, annotations of `synthesize(seed=seed, size=size)`.

    scans: how many scans that run wrote (their series uids are looked up by index). A nodule of
    another series, or with no planned nodule within MATCH_MM, gets {"kind": "unknown", "site": "unknown"}.
    """
    index = {series_uid(seed, i, size): i for i in range(scans)}
    plans: dict[str, tuple[np.ndarray, list]] = {}
    labels = []
    for nodule in nodules:
        i = index.get(nodule.series_uid)
        if i is None:
            labels.append({"kind": "unknown", "site": "unknown"})
            continue
        if nodule.series_uid not in plans:
            plan = plan_scan(seed, i, size, scale)
            centres = plan.world(np.array([n.centre for n in plan.nodules]).reshape(-1, 3))
            plans[nodule.series_uid] = (centres, plan.nodules)
        centres, planned = plans[nodule.series_uid]
        distance = np.linalg.norm(centres - np.asarray(nodule.center_xyz), axis=1) if len(planned) else np.array([])
        if not len(distance) or distance.min() > MATCH_MM:
            labels.append({"kind": "unknown", "site": "unknown"})
            continue
        best = planned[int(distance.argmin())]
        labels.append({"kind": best.kind, "site": best.site})
    return labels
