"""The blob candidates (`detect.blobs`, `Predictor(blob_weight=...)`): what they add and what they cost.

Run after bench/detect.py (it reads that bench's trained detector and held-out scans, under
NODULEFLOW_BENCH_DIR or $TMPDIR/noduleflow-bench): .venv/bin/python bench/detect_blobs.py   (about 20 minutes
on 2 cores)

1. Quality: `detect` on the two held-out seeds' full-resolution scans (30 each) with the default blob weight
   and with none (`blob_weight=0`, the baseline: the U-Net's candidates alone), each scored -> CPM and
   candidate recall (nodules that get at least one candidate) of both, and their difference.
2. Speed: seconds per scan of both, interleaved scan by scan (same load on the machine), on the first
   3 full-resolution held-out scans and the 3 small timed scans (medians of 3 rounds each).
Ends with `cpm_no_blobs`, `cpm_blobs`, `recall_no_blobs`, `recall_blobs` (both seeds' nodules pooled), then
`seconds_per_scan_blobs`, `seconds_per_scan_no_blobs` and `ratio_vs_no_blobs` (s with / s without, full scans).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from noduleflow.ct import read_volume
from noduleflow.detect import Predictor, detect
from noduleflow.detect.pipeline import DETECTIONS_JSON, scan_sources
from noduleflow.detect.predictor import DEFAULT_BLOB_WEIGHT
from noduleflow.evaluate import evaluate
from noduleflow.metrics.recall import candidate_recall

SEEDS = {9001: "heldout-full", 9002: "heldout2-full"}  # bench/detect.py's held-out seeds and folders
TIMED_FULL, ROUNDS = 3, 3


def main() -> None:
    folder = Path(os.environ.get("NODULEFLOW_BENCH_DIR", Path(tempfile.gettempdir()) / "noduleflow-bench")) / "detect"
    run_dir = folder / "runs" / "detector-full"
    if not (run_dir / "classify" / "best.pt").is_file():
        sys.exit(f"error: no trained detector in {run_dir}; run bench/detect.py first (same NODULEFLOW_BENCH_DIR)")
    totals = {}
    for weight in (0.0, DEFAULT_BLOB_WEIGHT):
        cpms, found, nodules = [], 0, 0
        for seed, name in SEEDS.items():
            out = folder / f"out-blobs-{weight}-{seed}"
            summary = detect(folder / name, run_dir, out, progress=False, restart=True, blob_weight=weight)
            report = evaluate(folder / name, out / DETECTIONS_JSON, out)
            recall = candidate_recall(report.froc.matching)
            lo, hi = report.froc.cpm_ci
            print(
                f"blob weight {weight}, held-out seed {seed}: CPM {report.froc.cpm:.4f} ({lo:.3f}-{hi:.3f}), "
                f"{recall.found} of {recall.total} nodules get a candidate; {summary.describe()}"
            )
            cpms.append(report.froc.cpm)
            found, nodules = found + recall.found, nodules + recall.total
        totals[weight] = (float(np.mean(cpms)), found / nodules)
    with_blobs = Predictor.from_run(run_dir)
    predictors = (with_blobs, Predictor(with_blobs.nets, blob_weight=0))  # the same loaded models
    ours, base = _time(predictors, scan_sources(folder / SEEDS[9001])[:TIMED_FULL], "full-resolution")
    small, small_base = _time(predictors, scan_sources(folder / "timed-small"), "small")
    print(f"small scans: {small:.2f} s/scan with blobs, {small_base:.2f} without, ratio {small / small_base:.2f}")
    (cpm_base, recall_base), (cpm, recall) = totals[0.0], totals[DEFAULT_BLOB_WEIGHT]
    print(f"cpm_no_blobs {cpm_base:.4f}")
    print(f"cpm_blobs {cpm:.4f}")
    print(f"cpm_gain {cpm - cpm_base:+.4f}")
    print(f"recall_no_blobs {recall_base:.4f}")
    print(f"recall_blobs {recall:.4f}")
    print(f"seconds_per_scan_blobs {ours:.2f}")
    print(f"seconds_per_scan_no_blobs {base:.2f}")
    print(f"ratio_vs_no_blobs {ours / base:.2f}")


def _time(predictors: tuple[Predictor, Predictor], paths: list[Path], label: str) -> tuple[float, float]:
    """Mean over `paths` of the median seconds per scan (ROUNDS rounds) of both `predictors` (with blobs, without),
    interleaved."""
    volumes = [read_volume(p) for p in paths]
    predictors[1].predict(volumes[0])  # warm-up: first calls allocate and pick kernels
    times = np.zeros((2, ROUNDS, len(volumes)))
    for r in range(ROUNDS):
        for k, volume in enumerate(volumes):
            for j, predictor in enumerate(predictors):
                start = time.perf_counter()
                predictor.predict(volume)
                times[j, r, k] = time.perf_counter() - start
    ours, base = np.median(times, axis=1)  # (scans,) each
    for k, volume in enumerate(volumes):
        print(f"  {label} {volume.shape}: {ours[k]:.1f} s with blobs, {base[k]:.1f} s without (medians of {ROUNDS})")
    return float(ours.mean()), float(base.mean())


if __name__ == "__main__":
    main()
