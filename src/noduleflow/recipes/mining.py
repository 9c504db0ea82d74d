"""Candidates from the trained segmentation, for the classifier to learn from (hard-negative mining).

The classifier of a detector ranks what the U-Net proposes, but candidates.csv holds other
points (LUNA16's, or synth's hard negatives). `mine_candidates` runs the U-Net over the scans of a
prepared data folder and writes its components in candidates.csv's format: class 1 when the
centre lies within an annotated nodule's radius (the LUNA16 hit rule), else 0.

Mining costs U-Net time per voxel, so it covers at most `max_voxels` of scans, taken in a fixed
shuffled order: every scan of a small data set, a share of a full-resolution or LUNA16-sized one.
The cap is where more mined scans stopped raising the held-out CPM while the recipe's time kept
growing (the measured trade of mined scans against classifier epochs: docs/decisions.md, 2026-11-30).

`train detector` adds the file to the classifier's candidates (`classify.extra_candidates`), so the
classifier sees the segmentation's own false positives (vessel ends, hilum, wall) before it meets
them in `detect`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from rich.progress import track

from noduleflow.data.luna16 import on_findings
from noduleflow.files import atomic_open

MINE_VOXELS = 2.5e9  # scan voxels mined at most (module docstring; docs/decisions.md, 2026-11-30)


def mine_candidates(
    data: str | Path,
    segment_run: str | Path,
    out_csv: str | Path,
    *,
    threshold: float = 0.3,
    max_per_scan: int = 100,
    max_voxels: float = MINE_VOXELS,
    progress: bool = True,
) -> dict[str, int]:
    """Write the segmentation's candidates on the scans of `data` (prepared cache) to `out_csv`.

    threshold: segmentation probability for a component (lower than detection's 0.5: more, harder
    negatives). max_voxels: scans are mined in a fixed shuffled order until their voxels would pass
    this (at least one scan). Returns {"scans" (mined), "of" (in `data`), "candidates", "positives"}.
    The CSV is written atomically.
    """
    from noduleflow.data.cache import DEFAULT_CACHE_NAME, ScanCache
    from noduleflow.data.datasets import OpenScans
    from noduleflow.data.luna16 import load_index
    from noduleflow.detect.models import load_segmentation
    from noduleflow.detect.predictor import Predictor
    from noduleflow.detect.runtime import exported_runtime, load_exported

    data = Path(data)
    index = load_index(data)
    scans = OpenScans(ScanCache(data / DEFAULT_CACHE_NAME))  # each entry opened once: sized, then mined
    segment_run = Path(segment_run)
    # the components and the map's peaks below the threshold (`detect.peaks`: the classifier learns them too,
    # should `detect --peaks` show it such candidates), not the maxima inside components, as the recipe was
    # measured; the int8 U-Net when `train detector` has exported it (`noduleflow export`), else eager PyTorch
    settings = {
        "threshold": threshold,
        "max_candidates": max_per_scan,
        "rank_candidates": max_per_scan,
        "peaks": True,
        "inner_peaks": False,
    }
    if exported_runtime(segment_run.parent) == "int8":
        models = load_exported(segment_run.parent, "int8", parts=("segment",))
        predictor = Predictor(models, **settings)
    else:
        predictor = Predictor(load_segmentation(segment_run), runtime="torch", **settings)
    uids = _within(index.series_uids, [scans(uid).hu.size for uid in index.series_uids], max_voxels)
    rows: list[tuple[str, float, float, float, int]] = []
    for uid in track(uids, description="mine candidates", disable=not progress):
        scan = scans(uid)
        lung = scan.lung_mask().to_array()
        if not lung.any():
            continue
        comps = predictor.candidates(scan.volume(), lung)
        xyz = scan.irc_to_xyz(comps.centers_irc).reshape(-1, 3)
        hit = on_findings([uid] * len(xyz), xyz, index.nodules_of([uid]))
        rows += [(uid, *map(float, p), int(h)) for p, h in zip(xyz, hit)]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_csv) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("seriesuid", "coordX", "coordY", "coordZ", "class"))
        writer.writerows((uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", cls) for uid, x, y, z, cls in rows)
    return {
        "scans": len(uids),
        "of": len(index.series_uids),
        "candidates": len(rows),
        "positives": int(np.sum([r[4] for r in rows])),
    }


def _within(uids: tuple[str, ...], voxels: list[int], max_voxels: float) -> list[str]:
    """The series of a fixed shuffle of `uids` (seed 0) up to `max_voxels` in all, at least the first."""
    order = np.random.default_rng(0).permutation(len(uids))
    total = np.cumsum(np.asarray(voxels, np.float64)[order])
    return [uids[i] for i in order[: max(1, int(np.searchsorted(total, max_voxels, side="right")))]]
