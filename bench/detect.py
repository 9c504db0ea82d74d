"""Detection quality (LUNA16 CPM on held-out synthetic scans) and speed against a book-style baseline.

Run: .venv/bin/python bench/detect.py   (about an hour and 25 GB of disk from scratch on 2 cores; 25 minutes with a cached run)
Set NODULEFLOW_BENCH_DIR to keep the data and the trained detector elsewhere (default: $TMPDIR/noduleflow-bench);
pass --retrain to train the detector again even though a complete one is cached there.

1. Synthetic training scans (seed 11, 80 full-resolution scans of 512 x 512 x 120-480 voxels) and
   held-out scans (seed 9001, never used in training): 30 at full resolution for the CPM, and the
   first 3 of the same patients as `small` scans (about 256 x 256 x 100-140) for the timing.
   Why full resolution for the CPM: LUNA16 scans (and the challenge's CPM) are at 0.6-0.9 mm pixels,
   0.6-2.5 mm slices, and so are `synth --size full` scans. At half that resolution (the small
   scans: 1.2-2.4 mm pixels, ~2.5 mm slices) a 3-5 mm nodule is 2-3 voxels across, the size of a
   vessel end: trained on 160 small scans the recipe reached CPM 0.75 (40 of 52 held-out nodules
   found), and eleven U-Net variants (depth, width, 3D stem, losses, copy-paste, more scans) all
   marked 32-37 of another seed's 50 nodules. Its U-Net trained on 80 full-resolution scans marked
   43 of those 50 patients' nodules imaged at full resolution (ground glass 6 of 11 instead of 3),
   and the whole recipe reached CPM 0.82 (46 of 52 found; 27.2 min) on the held-out seed, 0.83
   (27.6 min) with the classifier's patches in mm, 0.87 (27.1 min) mining 36 instead of 19 scans and
   keeping the classifier's last epoch (`recipes.detector`, `recipes.mining`).
   Why 80: mining is capped by voxels (`recipes.mining`), the rest of the recipe is sized in samples,
   so more scans cost synthesis and disk (80 scans and their cache: about 20 GB), not training time.
   Why 30 held-out: 52 nodules; the printed 95% interval shows the noise that is left.
2. The default recipe (`noduleflow train detector`) into <bench>/detect/runs/detector-full, or the cached
   run when its training.json shows it finished; the training time it took is printed either way.
3. `noduleflow detect` on the held-out scans, scored by `noduleflow evaluate`'s FROC code -> CPM.
4. Time per small held-out scan (the issue's 256 x 256 x ~128), the same trained weights in both
   pipelines (speed depends on the architecture, not on which scans trained it), interleaved in one run:
   - noduleflow: `Predictor` as `detect` runs it (`--runtime auto`: lung windows, 8 slices a batch, the U-Net's
     int8 version under ONNX Runtime, the batch-norm-folded channels_last_3d classifier in PyTorch, malignancy
     computed with it over their shared layers, candidates batched and ranked);
   - baseline, as "Deep Learning with PyTorch" ch. 14 does it: every slice at full resolution, 4 a
     batch, eager fp32 under no_grad, no channels_last, no lung restriction, every connected
     component of the thresholded segmentation (eroded once, labelled and centred over the whole volume,
     as the book's groupSegmentationOutput) classified one patch at a time (and the malignancy model
     run one patch at a time on those called nodules).
   Each small scan is timed 3 times with both (medians: timings here wander by a third between runs).
   The U-Net was trained on full-resolution scans, so by default noduleflow segments these 1.2-2.4 mm-pixel
   scans resampled to its training spacing (`detect.grid`: several times the voxels of their lung box, for a
   CPM on small scans of 0.7-0.85 instead of 0.4-0.6); the baseline, as the book, segments every scan as it is. So each small
   scan is also timed with noduleflow on its own voxels (`resample=False`), the baseline's work:
   `ratio_vs_baseline` compares the two pipelines on the same voxels, `ratio_vs_baseline_resampled` the
   default against the baseline.
   The first 2 full-resolution held-out scans are timed once the same way, for LUNA16-sized scans.
5. The runtimes side by side: the same held-out scans detected with eager PyTorch (`--runtime torch`), the
   float32 ONNX exports (`--runtime onnx`, no torch in the pipeline) and the int8 U-Net (`--runtime int8`,
   the default), each scored -> `cpm_torch`, `cpm_onnx`, `cpm_int8` and their differences from eager (the
   exports must stay within 0.005 of it); and the seconds per small scan of each, interleaved.
After the CPM it prints the candidate recall (nodules that get at least one candidate, by size, kind and site),
and the malignancy ROC AUC of the hit nodules three ways: the detector's (its measured model, `detect.measure`,
fitted on the training scans' labelled nodules), the annotated diameter's alone (the baseline a model must
beat), and the ceiling: the generator's own noiseless log-odds, which even a
perfect model cannot pass, since each label was drawn from those log-odds plus noise.
Steps 3 and the recall are repeated on a second held-out seed (9002, 30 full scans): `cpm_seed2` and the spread
between the two seeds' CPMs (`cpm_seed_spread`), and on the same two seeds' patients imaged as 30 `small` scans
each (`cpm_small`, `cpm_small_seed2`, their candidate recall); `--skip-timing` stops there, without steps 4 and 5.
`--training-seeds N` (default 1) also trains the recipe with training seeds 1 .. N-1 (runs/detector-full-seedS,
kept for the next run like the first) and scores each on both held-out seeds: `cpm_training_seeds_mean`,
`_min` and `_max` over the N training seeds (held-out seed 9001; `cpm_seed2_training_seeds_*` for 9002), so
that the figure is the recipe's, not one lucky initialisation's.
Ends with `cpm_small`, `candidate_recall R`, `cpm_seed2`, `cpm_seed_spread`, `cpm X`, `seconds_per_scan_resampled`
and `ratio_vs_baseline_resampled` (the default on small scans), `seconds_per_scan Y` (noduleflow on the scans' own
voxels) and `ratio_vs_baseline Z` (baseline s / noduleflow s, the same voxels).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from noduleflow.ct import read_volume
from noduleflow.data.patches import crop_box, crop_patch, hu_to_unit
from noduleflow.detect import Predictor, detect, load_detector
from noduleflow.detect.measure import MEASURED_NAME
from noduleflow.detect.pipeline import DETECTIONS_JSON, SUBMISSION_CSV, scan_sources
from noduleflow.evaluate import evaluate, read_submission
from noduleflow.export import export_run
from noduleflow.metrics.classification import roc_auc
from noduleflow.metrics.malignancy import malignancy_inputs
from noduleflow.metrics.recall import candidate_recall
from noduleflow.models import input_size_of
from noduleflow.recipes.detector import EXPORT_FORMATS, TRAINING_JSON, train_detector
from noduleflow.recipes.measured import fit_run_measured
from noduleflow.synth import synthesize
from noduleflow.synth.truth import nodule_labels, nodule_log_odds

TRAIN_SEED, TRAIN_SCANS = 11, 80
HELDOUT_SEED, HELDOUT_SCANS = 9001, 30
HELDOUT2_SEED = 9002  # a second held-out seed of HELDOUT_SCANS scans: its CPM and the spread between the two
SIZE = "full"  # of the training and CPM scans (module docstring); the timed ones are "small"
TIMED_SCANS = 3  # small held-out scans timed with both pipelines (the baseline takes about a minute each)
TIMED_ROUNDS = 3  # each small scan timed 3 times with both pipelines, the medians kept (`_time_both`)
TIMED_FULL = 2  # full-resolution held-out scans timed too, for LUNA16-sized scans (the baseline takes 3-5 minutes each)
RUNTIMES = ("torch", "onnx", "int8")  # compared side by side (module docstring, step 5)


def _loads(run_dir: Path) -> bool:
    """Whether the cached detector still loads (a changed architecture makes it stale)."""
    from noduleflow.detect import load_detector
    from noduleflow.errors import CheckpointError

    try:
        load_detector(run_dir)
    except CheckpointError as err:
        print(f"the cached detector is stale ({err.message}); training it again")
        return False
    return True


def main() -> None:
    folder = Path(os.environ.get("NODULEFLOW_BENCH_DIR", Path(tempfile.gettempdir()) / "noduleflow-bench")) / "detect"
    train_data, heldout, timed = folder / f"train-{SIZE}", folder / f"heldout-{SIZE}", folder / "timed-small"
    print(synthesize(train_data, scans=TRAIN_SCANS, seed=TRAIN_SEED, size=SIZE, progress=False).describe())
    print(synthesize(heldout, scans=HELDOUT_SCANS, seed=HELDOUT_SEED, size=SIZE, progress=False).describe())
    heldout2 = folder / f"heldout2-{SIZE}"
    print(synthesize(heldout2, scans=HELDOUT_SCANS, seed=HELDOUT2_SEED, size=SIZE, progress=False).describe())
    print(synthesize(timed, scans=TIMED_SCANS, seed=HELDOUT_SEED, size="small", progress=False).describe())

    training_seeds = _training_seeds()
    run_dir = _trained(folder / "runs" / f"detector-{SIZE}", train_data, seed=0)

    report, recall, ceiling = score_heldout(run_dir, heldout, HELDOUT_SEED, folder / "out")
    # a second held-out seed: a recipe tuned to one seed's scans shows it here (issue 21 asks for a spread <= 0.03)
    report2, recall2, _ = score_heldout(run_dir, heldout2, HELDOUT2_SEED, folder / "out-seed2")
    spread = abs(report.froc.cpm - report2.froc.cpm)
    print(
        f"CPM by held-out seed: {HELDOUT_SEED} {report.froc.cpm:.3f}, {HELDOUT2_SEED} {report2.froc.cpm:.3f} "
        f"(spread {spread:.3f}); candidate recall {recall.recall:.3f} and {recall2.recall:.3f}"
    )
    # the same two seeds' patients imaged at half the resolution: the U-Net segments them resampled (`detect.grid`)
    small = {}
    for heldout_seed in (HELDOUT_SEED, HELDOUT2_SEED):
        scans = folder / f"heldout-small-{heldout_seed}"
        print(synthesize(scans, scans=HELDOUT_SCANS, seed=heldout_seed, size="small", progress=False).describe())
        out = folder / f"out-small-{heldout_seed}"
        small[heldout_seed] = score_heldout(run_dir, scans, heldout_seed, out, size="small")[:2]
    by_seed = [(report.froc.cpm, report2.froc.cpm)]
    for seed in range(1, training_seeds):
        other = _trained(folder / "runs" / f"detector-{SIZE}-seed{seed}", train_data, seed=seed)
        cpms = tuple(
            score_heldout(other, scans, heldout_seed, folder / f"out-training-seed{seed}-{heldout_seed}")[0].froc.cpm
            for scans, heldout_seed in ((heldout, HELDOUT_SEED), (heldout2, HELDOUT2_SEED))
        )
        print(
            f"training seed {seed}: CPM {cpms[0]:.3f} (held-out seed {HELDOUT_SEED}), {cpms[1]:.3f} ({HELDOUT2_SEED})"
        )
        by_seed.append(cpms)
    if "--skip-timing" in sys.argv:
        print("--skip-timing: steps 4 and 5 (speed against the baseline, the runtimes side by side) left out")
        _quality_lines(report, recall, report2, ceiling, by_seed, small)
        return

    ours, own, base = _time_both(run_dir, scan_sources(timed), rounds=TIMED_ROUNDS)
    print(
        f"timed on {TIMED_SCANS} small held-out scans ({TIMED_ROUNDS} rounds): noduleflow {np.mean(ours):.2f} s/scan "
        f"(segmented at the U-Net's training spacing), {np.mean(own):.2f} s/scan on the scans' own voxels as the "
        f"baseline, baseline {np.mean(base):.2f} s/scan"
    )
    ours_full, _, base_full = _time_both(run_dir, scan_sources(heldout)[:TIMED_FULL])
    print(
        f"timed on {TIMED_FULL} full-resolution held-out scans: noduleflow {np.mean(ours_full):.2f} s/scan, "
        f"baseline {np.mean(base_full):.2f} s/scan, ratio {np.mean(base_full) / np.mean(ours_full):.2f}"
    )
    cpms = compare_runtimes(run_dir, heldout, folder / "out-runtimes")
    speeds = time_runtimes(run_dir, scan_sources(timed), rounds=TIMED_ROUNDS)
    print("runtime   cpm     vs torch   s/scan (small)")
    for runtime in RUNTIMES:
        print(f"{runtime:<9} {cpms[runtime]:.4f}  {cpms[runtime] - cpms['torch']:+.4f}    {speeds[runtime]:.2f}")
    for runtime in RUNTIMES:
        print(f"cpm_{runtime} {cpms[runtime]:.4f}")
    for runtime in RUNTIMES[1:]:
        print(f"cpm_{runtime}_minus_torch {cpms[runtime] - cpms['torch']:+.4f}")
        print(f"speedup_{runtime}_vs_torch {speeds['torch'] / speeds[runtime]:.2f}")
    _quality_lines(report, recall, report2, ceiling, by_seed, small)
    print(f"seconds_per_scan_resampled {np.mean(ours):.3f}")
    print(f"ratio_vs_baseline_resampled {np.mean(base) / np.mean(ours):.2f}")
    print(f"seconds_per_scan {np.mean(own):.3f}")
    print(f"ratio_vs_baseline {np.mean(base) / np.mean(own):.2f}")


def _training_seeds() -> int:
    """N of `--training-seeds N` (1 when absent)."""
    if "--training-seeds" not in sys.argv:
        return 1
    at = sys.argv.index("--training-seeds") + 1
    if at >= len(sys.argv) or not sys.argv[at].isdigit() or int(sys.argv[at]) < 1:
        sys.exit("error: --training-seeds takes a count of 1 or more, e.g. --training-seeds 3")
    return int(sys.argv[at])


def _trained(run_dir: Path, train_data: Path, seed: int) -> Path:
    """`run_dir`, the recipe trained on `train_data` with training seed `seed` (reused unless --retrain or stale)."""
    if (run_dir / TRAINING_JSON).is_file() and "--retrain" not in sys.argv and _loads(run_dir):
        print(f"reusing the detector cached in {run_dir} (pass --retrain to train it again)")
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        print(
            train_detector(train_data, run=run_dir.name, runs_dir=run_dir.parent, seed=seed, progress=False).describe()
        )
    if (run_dir / "malignancy" / "best.pt").is_file() and not (run_dir / "malignancy" / MEASURED_NAME).is_file():
        fitted = fit_run_measured(train_data, run_dir)  # a cached run trained before the recipe fitted it
        print(f"measured malignancy fitted on {fitted['nodules']} labelled training nodules")
    # what a cached detector's export lacks (made before `noduleflow export`, or before joint.onnx); the rest is kept
    print(export_run(run_dir, formats=EXPORT_FORMATS, data=train_data).describe())
    budget = json.loads((run_dir / TRAINING_JSON).read_text())["seconds"]
    print(
        f"training budget (seed {seed}): {sum(budget.values()) / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in budget.items())
        + ") on this machine, limit 30 min"
    )
    return run_dir


def score_heldout(run_dir: Path, heldout: Path, seed: int, out: Path, size: str = SIZE):
    """`detect` + `evaluate` on one held-out seed's scans of `size`: (Evaluation, candidate recall, malignancy
    ceiling AUC)."""
    summary = detect(heldout, run_dir, out, progress=False, restart=True)  # never a previous build's results
    print(f"held-out seed {seed}: {summary.describe()}")
    # the detections JSON: the same marks as submission.csv, with each finding's malignancy (the CSV has none)
    report = evaluate(heldout, out / DETECTIONS_JSON, out)
    print(report.describe())
    sens = ", ".join(f"{s:.2f}" for s in report.froc.sensitivities)
    print(
        f"sensitivity at 1/8..8 FPs per scan: {sens}; CPM 95% interval {report.froc.cpm_ci[0]:.3f}-{report.froc.cpm_ci[1]:.3f}"
    )
    matching = report.froc.matching  # the ceiling of the CPM: nodules that no candidate reaches are lost at every rate
    labels = nodule_labels(matching.nodules, seed=seed, scans=HELDOUT_SCANS, size=size)
    recall = candidate_recall(matching, labels=labels)
    print(recall.describe())
    mal, ceiling = report.malignancy, malignancy_ceiling(report, out / DETECTIONS_JSON, seed, size)
    if mal is not None:
        print(
            f"malignancy ROC AUC over {mal.nodules} hit nodules: model {mal.auc:.3f}, diameter alone "
            f"{mal.diameter_auc:.3f}, ceiling {ceiling:.3f} (the generator's noiseless log-odds)"
        )
    return report, recall, ceiling


def _quality_lines(report, recall, report2, ceiling: float, by_seed: list[tuple[float, float]], small: dict) -> None:
    """The quality figures, one `name value` line each: malignancy AUCs, the small scans' CPM and recall (`small`:
    held-out seed -> (Evaluation, recall)), recall, the CPM over training seeds (when more than one trained), the
    second seed's CPM, the CPM."""
    if len(by_seed) > 1:
        print(f"over {len(by_seed)} training seeds (0 .. {len(by_seed) - 1}):")
        for name, cpms in (("cpm", [c[0] for c in by_seed]), ("cpm_seed2", [c[1] for c in by_seed])):
            print(f"{name}_training_seeds_mean {np.mean(cpms):.4f}")
            print(f"{name}_training_seeds_min {min(cpms):.4f}\n{name}_training_seeds_max {max(cpms):.4f}")
    mal = report.malignancy
    if mal is not None:
        print(f"malignancy_auc {mal.auc:.4f}\nmalignancy_diameter_auc {mal.diameter_auc:.4f}")
        print(f"malignancy_ceiling_auc {ceiling:.4f}")
    for name, heldout_seed in (("", HELDOUT_SEED), ("_seed2", HELDOUT2_SEED)):
        small_report, small_recall = small[heldout_seed]
        low, high = small_report.froc.cpm_ci
        print(f"small held-out scans of seed {heldout_seed}: CPM 95% interval {low:.3f}-{high:.3f}")
        print(f"cpm_small{name} {small_report.froc.cpm:.4f}")
        print(f"candidate_recall_small{name} {small_recall.recall:.4f}")
    print(f"candidate_recall {recall.recall:.4f}")
    print(f"cpm_seed2 {report2.froc.cpm:.4f}")
    print(f"cpm_seed_spread {abs(report.froc.cpm - report2.froc.cpm):.4f}")
    print(f"cpm {report.froc.cpm:.4f}")


def malignancy_ceiling(report, submission: Path, seed: int, size: str = SIZE) -> float:
    """ROC AUC of the generator's noiseless malignancy log-odds on the hit nodules `report`'s AUCs are over."""
    picked = malignancy_inputs(report.froc.matching, read_submission(submission))
    log_odds = nodule_log_odds(report.froc.matching.nodules, seed=seed, scans=HELDOUT_SCANS, size=size)
    return roc_auc(log_odds[picked.index], picked.malignant)


def compare_runtimes(run_dir: Path, scans: Path, out: Path) -> dict[str, float]:
    """CPM of `detect` on `scans` with each of RUNTIMES (the same run's models: eager, float32 ONNX, int8 U-Net)."""
    cpms = {}
    for runtime in RUNTIMES:
        summary = detect(scans, run_dir, out / runtime, progress=False, runtime=runtime, restart=True)
        cpms[runtime] = evaluate(scans, out / runtime / SUBMISSION_CSV, out / runtime, bootstrap=0).froc.cpm
        print(f"  --runtime {runtime}: CPM {cpms[runtime]:.4f}; {summary.describe()}")
    return cpms


def time_runtimes(run_dir: Path, paths: list[Path], rounds: int = 1) -> dict[str, float]:
    """Median seconds per scan of the Predictor with each of RUNTIMES, interleaved scan by scan (same load)."""
    predictors = {runtime: Predictor.from_run(run_dir, runtime=runtime) for runtime in RUNTIMES}
    volumes = [read_volume(p) for p in paths]
    times = {runtime: np.zeros((rounds, len(volumes))) for runtime in RUNTIMES}
    for predictor in predictors.values():
        predictor.predict(volumes[0])  # warm-up: first calls allocate and pick kernels
    for r in range(rounds):
        for k, volume in enumerate(volumes):
            for runtime, predictor in predictors.items():
                start = time.perf_counter()
                predictor.predict(volume)
                times[runtime][r, k] = time.perf_counter() - start
    return {runtime: float(np.mean(np.median(t, axis=0))) for runtime, t in times.items()}


def _time_both(run_dir: Path, paths: list[Path], rounds: int = 1) -> tuple[list[float], list[float], list[float]]:
    """Seconds per scan of the Predictor, of the Predictor on the scan's own voxels (`resample=False`: the
    baseline's work), and of the baseline, alternating scan by scan (same load on the machine). On a scan within
    the U-Net's training spacing the first two are the same pipeline.

    rounds: each scan is timed that many times with each; its time is the median (this machine's timings
    wander: the same baseline took 4.5 s a scan in one run and 6.5-7.1 in the next three).
    """
    predictor, baseline_models = Predictor.from_run(run_dir), load_detector(run_dir)
    native = Predictor(predictor.nets, resample=False)
    volumes = [read_volume(p) for p in paths]
    predictor.predict(volumes[0])  # warm-up: first calls allocate and pick kernels
    grids = [predictor.grid(volume) for volume in volumes]  # which are resampled for the U-Net, and to what spacing
    ours, own, base = (np.zeros((rounds, len(volumes))) for _ in range(3))
    for r in range(rounds):
        for k, (volume, grid) in enumerate(zip(volumes, grids)):
            start = time.perf_counter()
            found = predictor.predict(volume)
            ours[r, k] = time.perf_counter() - start
            if grid is None:
                own[r, k] = ours[r, k]
            else:
                start = time.perf_counter()
                native.predict(volume)
                own[r, k] = time.perf_counter() - start
            start = time.perf_counter()
            n_base = _baseline(baseline_models, volume)
            base[r, k] = time.perf_counter() - start
            if r == rounds - 1:
                resampled = (
                    ""
                    if grid is None
                    else f" at {np.round(grid.volume.spacing_irc, 2).tolist()} mm (I R C), {np.median(own[:, k]):.1f} s on "
                    "the scan's own voxels"
                )
                print(
                    f"  {volume.series_uid[-12:]} {volume.shape}: noduleflow {np.median(ours[:, k]):.1f} s{resampled} "
                    f"({found.candidates} candidates), baseline {np.median(base[:, k]):.1f} s ({n_base} candidates)"
                    + (f", medians of {rounds} rounds" if rounds > 1 else "")
                )
    return list(np.median(ours, axis=0)), list(np.median(own, axis=0)), list(np.median(base, axis=0))


@torch.no_grad()
def _baseline(models, volume) -> int:
    """The book's pipeline (see the module docstring); returns the number of candidates classified."""
    hu, (n_i, n_r, n_c), context = volume.hu, volume.shape, models.context
    probs = np.zeros(hu.shape, np.float32)
    for i in range(0, n_i, 4):
        batch = [
            hu_to_unit(crop_box(hu, (j - context, 0, 0), (2 * context + 1, n_r, n_c)))
            for j in range(i, min(i + 4, n_i))
        ]
        x = torch.from_numpy(np.stack(batch))  # (4, 7, R, C)
        probs[i : i + len(batch)] = torch.sigmoid(models.segment(x)[:, 0]).numpy()
    # the book's groupSegmentationOutput: erode the mask once, label it, HU-weighted centres over the whole volume
    clean = ndimage.binary_erosion(probs > 0.5, iterations=1)
    labels, count = ndimage.label(clean)
    centers = np.asarray(
        ndimage.center_of_mass(hu.clip(-1000, 1000) + 1001, labels=labels, index=np.arange(1, count + 1))
    )
    size, size_mm = (
        input_size_of(models.classify),
        models.patch_mm.get("classify"),
    )  # patches as the classifier was trained on
    for center in centers.reshape(-1, 3):
        x = torch.from_numpy(hu_to_unit(crop_patch(hu, center, size, size_mm, volume.spacing_irc)))[
            None, None
        ]  # (1, 1, *size)
        if torch.softmax(models.classify(x), 1)[0, 1] > 0.5 and models.malignancy is not None:
            models.malignancy(x)
    return count


if __name__ == "__main__":
    main()
