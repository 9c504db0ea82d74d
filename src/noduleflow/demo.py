"""`noduleflow demo`: the whole pipeline on built-in synthetic CT, for a newcomer with no data.

synthesize training scans -> prepare the cache -> train the detector (segmentation, nodule
classifier, malignancy) -> synthesize held-out scans (a seed never used in training) -> detect ->
evaluate (LUNA16 FROC / CPM). Every step writes under OUT; a second run reuses what is complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

_HELD_OUT_SEED_OFFSET = 10_000  # held-out scans never share a seed with training scans


def run_demo(
    out: Path, *, scans: int = 12, held_out: int = 3, seed: int = 0, scale: float = 0.25, threads: int = 0
) -> None:
    """Run the pipeline end to end under `out`; print what each step made and where to look.

    scans: synthetic training scans; held_out: synthetic scans for detection and scoring;
    scale: the fraction of the default detector recipe's training (1.0 takes about 28 minutes on 2 cores).
    """
    from noduleflow.detect import detect
    from noduleflow.evaluate import evaluate
    from noduleflow.recipes.detector import TRAINING_JSON, train_detector
    from noduleflow.synth import synthesize

    console = Console()
    out = Path(out)
    data, test_data = out / "data", out / "held_out"
    run_dir = out / "runs" / "detector"
    start = time.perf_counter()

    console.rule(f"1/4 synthetic chest CT: {scans} training scans, {held_out} held-out scans")
    console.print(synthesize(data, scans=scans, seed=seed, size="small", preview=True).describe(), highlight=False)
    console.print(
        synthesize(test_data, scans=held_out, seed=seed + _HELD_OUT_SEED_OFFSET, size="small", preview=True).describe(),
        highlight=False,
    )

    console.rule("2/4 train the detector (segmentation U-Net, nodule classifier, malignancy)")
    if (run_dir / TRAINING_JSON).is_file():
        console.print(f"{run_dir} is already trained; delete it to train again.", highlight=False)
    else:
        console.print(
            train_detector(
                data, run=run_dir.name, runs_dir=run_dir.parent, seed=seed, scale=scale, threads=threads
            ).describe(),
            highlight=False,
        )

    console.rule("3/4 detect nodules in the held-out scans")
    detections = out / "detections"
    console.print(detect(test_data, run_dir, detections).describe(), highlight=False)

    console.rule("4/4 score the detections as LUNA16 does")
    report = evaluate(test_data, detections / "submission.csv", out / "evaluation")
    console.print(report.table())
    console.print(report.describe(), highlight=False)

    console.rule(f"done in {(time.perf_counter() - start) / 60:.1f} min")
    console.print(
        f"Look at: {data / 'preview'}/ (the synthetic nodules), {run_dir}/*/curves.png (training curves),\n"
        f"{detections / 'png'}/ (detections on CT slices), {report.png_path} (FROC curve).\n"
        f"Train the full recipe on more scans: noduleflow synth data/synth --scans 160 && "
        f"noduleflow train detector data/synth --run detector",
        highlight=False,
    )
