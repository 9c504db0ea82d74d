"""`noduleflow demo`: the whole pipeline on built-in synthetic CT, for a newcomer with no data.

synthesize training scans and held-out scans (a seed never used in training) -> prepare the cache and
train the detector (segmentation, nodule classifier, malignancy) -> detect -> evaluate (LUNA16 FROC / CPM).
Every step writes under OUT; a second run reuses what is complete (scans up to date, a trained detector).

Sized for the 10 minutes a newcomer waits on a 2-core CPU, with a CPM that means something: enough
held-out scans (and nodules) that the CPM's bootstrap interval says more than "somewhere from 0 to 1".
The training is the default detector recipe at a fraction of its samples per epoch (`scale`); the
measured times and CPMs behind these defaults are in docs/decisions.md, not here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from noduleflow.errors import ConfigError
from noduleflow.files import atomic_write, output_error, writable_dir

log = logging.getLogger("noduleflow")

_HELD_OUT_SEED_OFFSET = 10_000  # held-out scans never share a seed with training scans
DEMO_SCANS = 24
"""Synthetic training scans (small, 256 x 256 in-plane at most)."""
DEMO_HELD_OUT = 12
"""Held-out scans, detected and scored: at least 20 nodules with the default seed."""
DEMO_SCALE = 0.25
"""Fraction of the detector recipe's samples per epoch (`train_detector(scale=...)`)."""
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {}
"""Per-part dotted config keys over the recipe (`train_detector(overrides=...)`); none needed at present."""
STAGES = ("synthesize", "train", "detect", "evaluate", "report")
"""The stages timed in OUT/timings.json, in order (seconds of wall time each)."""
TIMINGS_JSON = "timings.json"
REPORT_HTML = "report.html"


def run_demo(
    out: Path,
    *,
    scans: int = DEMO_SCANS,
    held_out: int = DEMO_HELD_OUT,
    seed: int = 0,
    scale: float = DEMO_SCALE,
    threads: int = 0,
    mine: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> float:
    """Run the pipeline end to end under `out`; print what each step made, its time, and where to look next.

    scans: synthetic training scans; held_out: synthetic scans for detection and scoring (seed + 10000);
    scale: the fraction of the default detector recipe's training samples; mine: add the U-Net's own false
    positives to the classifier's candidates (`train_detector(mine=...)`); overrides: per-part dotted config
    keys (default DEMO_OVERRIDES). The very last line printed is `CPM X`; returns the CPM.
    Writes OUT/timings.json: wall seconds per stage (STAGES).
    """
    from noduleflow.detect import detect
    from noduleflow.evaluate import evaluate
    from noduleflow.recipes.detector import TRAINING_JSON, train_detector
    from noduleflow.report import write_report
    from noduleflow.synth import synthesize

    console = console or Console()
    out = writable_dir(out)  # fails in its first second, not after the training
    data, test_data = out / "data", out / "held_out"
    run_dir = out / "runs" / "detector"
    detections = out / "detections"
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def stage(name: str, title: str, work: Callable[[], Any]) -> Any:
        console.rule(f"{STAGES.index(name) + 1}/{len(STAGES)} {title}")
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        result = work()
        timings[name], cpu[name] = time.perf_counter() - wall0, _cpu_seconds() - cpu0
        console.print(f"{name}: {_minutes(timings[name])}", style="bold", highlight=False)
        log.info("demo stage %s: %.1f s wall, %.1f s CPU", name, timings[name], cpu[name])
        return result

    def synthesize_both() -> None:
        for folder, count, scan_seed in ((data, scans, seed), (test_data, held_out, seed + _HELD_OUT_SEED_OFFSET)):
            summary = synthesize(folder, scans=count, seed=scan_seed, size="small", preview=True, progress=progress)
            console.print(summary.describe(), highlight=False)
        if summary.nodules == 0:  # before training: the CPM would be undefined
            raise ConfigError(
                f"the {held_out} held-out scans of seed {seed + _HELD_OUT_SEED_OFFSET} hold no nodule to score",
                path=test_data,
                fix="Use more --held-out scans or another --seed.",
            )

    def train() -> None:
        if (run_dir / TRAINING_JSON).is_file():
            console.print(f"{run_dir} is already trained; delete it to train again.", highlight=False)
            return
        chosen = DEMO_OVERRIDES if overrides is None else overrides
        trained = train_detector(
            data,
            run=run_dir.name,
            runs_dir=run_dir.parent,
            seed=seed,
            scale=scale,
            mine=mine,
            threads=threads,
            progress=progress,
            overrides=chosen,
        )
        console.print(trained.describe(), highlight=False)

    stage("synthesize", f"synthetic chest CT: {scans} training scans, {held_out} held-out scans", synthesize_both)
    stage("train", "train the detector (segmentation U-Net, nodule classifier, malignancy)", train)
    stage(
        "detect",
        f"detect nodules in the {held_out} held-out scans",
        lambda: console.print(detect(test_data, run_dir, detections, progress=progress).describe(), highlight=False),
    )
    evaluation = stage(
        "evaluate",
        "score the detections as LUNA16 does",
        lambda: evaluate(test_data, detections / "submission.csv", out / "evaluation"),
    )
    console.print(evaluation.table())
    console.print(evaluation.describe(), highlight=False)
    report = stage(
        "report",
        "write the report: data, training curves, FROC, findings and misses on their slices, timings",
        lambda: write_report(
            run_dir, out / REPORT_HTML, detections=detections, evaluation=out / "evaluation", timings=dict(timings)
        ),
    )

    try:
        atomic_write(
            out / TIMINGS_JSON, json.dumps({name: round(timings[name], 2) for name in STAGES}, indent=1) + "\n"
        )
    except OSError as err:
        raise output_error(err, out / TIMINGS_JSON) from None
    console.print(_timing_table(timings, cpu))

    froc = evaluation.froc
    lo, hi = froc.cpm_ci
    console.print(
        f"CPM {froc.cpm:.3f} ({froc.confidence:.0%} interval {lo:.3f}-{hi:.3f}) on {froc.n_scans} held-out scans "
        f"holding {froc.n_nodules} nodules",
        highlight=False,
    )
    console.print(
        f"Report: {report}\n"
        f"Also: {data / 'preview'}/ (the synthetic nodules), {run_dir}/*/curves.png (training curves), "
        f"{detections / 'png'}/ (detections on CT slices).\n"
        "Next:\n"
        f"  noduleflow serve --run {run_dir}            a REST server on this detector\n"
        f"  noduleflow export {run_dir}                 ONNX / int8 / .pt2 files of its models\n"
        f"  noduleflow detect YOUR_SCANS --run {run_dir} --out detections   your own scans "
        "(.mhd, .nii.gz, DICOM folders)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"CPM {froc.cpm:.3f}", highlight=False)
    return froc.cpm


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (synthesis workers, loader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _timing_table(timings: dict[str, float], cpu: dict[str, float]) -> Table:
    table = Table(title="time per stage", title_justify="left")
    for column in ("stage", "wall", "CPU"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name in STAGES:
        table.add_row(name, _minutes(timings[name]), f"{cpu[name]:.0f} s")
    table.add_section()
    table.add_row("[bold]total[/bold]", _minutes(sum(timings.values())), f"{sum(cpu.values()):.0f} s")
    return table
