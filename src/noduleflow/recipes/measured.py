"""The measured malignancy model of a detector run (`detect.measure`), fitted on its training scans' nodules.

`train detector` calls `fit_run_measured` after the malignancy network: every nodule of `data` that carries a
malignant/benign label (annotations_with_malignancy.csv), on every scan outside the test split, is measured at
its annotated centre, and a logistic regression over the measures (with the ratio of the annotated to the
measured diameters, which calibrates the findings' diameters) is written to RUN/malignancy/measured.json,
which `detect` then uses for P(malignant) and diameters, and `noduleflow export` copies into the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from noduleflow.detect.measure import MEASURED_NAME, crop_measured, fit_measured, nodule_measures
from noduleflow.files import atomic_write


def fit_run_measured(data: str | Path, run_dir: str | Path, *, exclude: Iterable[str] = ()) -> dict[str, int]:
    """Fit and write RUN/malignancy/measured.json (atomically) from `data`'s labelled nodules, leaving out the
    series in `exclude` (the test split). Returns {"nodules", "malignant"}. Too few labels raise ValueError."""
    from noduleflow.data.cache import DEFAULT_CACHE_NAME, ScanCache
    from noduleflow.data.datasets import OpenScans
    from noduleflow.data.luna16 import load_index

    data, run_dir = Path(data), Path(run_dir)
    left_out = set(exclude)
    nodules = [n for n in load_index(data).nodules if n.malignant is not None and n.series_uid not in left_out]
    scans = OpenScans(ScanCache(data / DEFAULT_CACHE_NAME))
    by_series: dict[str, list] = {}
    for nodule in nodules:
        by_series.setdefault(nodule.series_uid, []).append(nodule)
    measures, labels, diameters = [], [], []
    for uid, found in sorted(by_series.items()):
        volume = scans(uid).volume()
        centers = volume.xyz_to_irc(np.array([n.center_xyz for n in found]), rounded=False)
        measures.append(nodule_measures(crop_measured(volume, centers)))
        labels += [bool(n.malignant) for n in found]
        diameters += [float(n.diameter_mm) for n in found]
    model = fit_measured(np.concatenate(measures) if measures else np.zeros((0, 3)), labels, diameters_mm=diameters)
    (run_dir / "malignancy").mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "malignancy" / MEASURED_NAME, json.dumps(model.to_dict(), indent=1) + "\n")
    return {"nodules": model.nodules, "malignant": model.malignant}
