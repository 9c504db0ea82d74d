"""Candidates from the trained segmentation, for the classifier to learn from (hard-negative mining).

The classifier of a detector ranks what the U-Net proposes, but candidates.csv holds other
points (LUNA16's, or synth's hard negatives). `mine_candidates` runs the U-Net over every scan of
a prepared data folder and writes its components in candidates.csv's format: class 1 when the
centre lies within an annotated nodule's radius (the LUNA16 hit rule), else 0. `train detector`
adds the file to the classifier's candidates (`data.extra_candidates`), so the classifier sees the
segmentation's own false positives (vessel ends, hilum, wall) before it meets them in `detect`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from rich.progress import track

from noduleflow.data.luna16 import on_findings


def mine_candidates(data: str | Path, segment_run: str | Path, out_csv: str | Path, *, threshold: float = 0.3,
                    max_per_scan: int = 100, progress: bool = True) -> dict[str, int]:
    """Write the segmentation's candidates on every scan of `data` (prepared cache) to `out_csv`.

    threshold: segmentation probability for a component (lower than detection's 0.5: more, harder
    negatives). Returns {"scans", "candidates", "positives"}. The CSV is written atomically.
    """
    from noduleflow.data.cache import DEFAULT_CACHE_NAME, ScanCache
    from noduleflow.data.luna16 import load_index
    from noduleflow.detect.models import load_segmentation
    from noduleflow.detect.predictor import Predictor
    from noduleflow.detect.runtime import INT8_NAME, fresh_export

    data = Path(data)
    index = load_index(data)
    cache = ScanCache(data / DEFAULT_CACHE_NAME)
    models = load_segmentation(segment_run)
    # the int8 U-Net when `train detector` has exported it (recipe.export_detector), else eager PyTorch:
    # for a one-off pass, not worth the ONNX export's ~10 s
    runtime = "int8" if fresh_export(models.segment_checkpoint, INT8_NAME) else "torch"
    predictor = Predictor(models, runtime=runtime, threshold=threshold, max_candidates=max_per_scan)
    rows: list[tuple[str, float, float, float, int]] = []
    for uid in track(index.series_uids, description="mine candidates", disable=not progress):
        scan = cache.open(uid)
        lung = scan.lung_mask().to_array()
        if not lung.any():
            continue
        comps = predictor.candidates(scan.volume(), lung)
        xyz = scan.irc_to_xyz(comps.centers_irc).reshape(-1, 3)
        hit = on_findings([uid] * len(xyz), xyz, index.nodules_of([uid]))
        rows += [(uid, *map(float, p), int(h)) for p, h in zip(xyz, hit)]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("seriesuid", "coordX", "coordY", "coordZ", "class"))
        writer.writerows((uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", cls) for uid, x, y, z, cls in rows)
    os.replace(tmp, out_csv)
    return {"scans": len(index.series_uids), "candidates": len(rows), "positives": int(np.sum([r[4] for r in rows]))}
