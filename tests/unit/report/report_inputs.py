"""The inputs of a report, built by hand around two half-size synthetic scans: a detector run folder (configs,
metrics.jsonl of three epochs per part, training.json), detections made from the annotations (two nodules hit,
one false positive, one nodule missed), the evaluation `noduleflow evaluate` writes of them, and the demo's
timings.json. No training: the report reads files, so hand-written ones test it exactly and in seconds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

PARTS = ("segment", "classify", "malignancy")
TIMINGS = {"synthesize": 4.5, "train": 321.0, "detect": 12.25, "evaluate": 2.0}


@dataclass(frozen=True)
class Inputs:
    root: Path
    data: Path
    run: Path
    detections: Path
    evaluation: Path
    nodules: list[dict]  # annotations.csv rows
    findings: list[tuple[str, float]]  # (series uid, probability) of every finding written


def write_run(run: Path, data: Path | None, parts=PARTS, *, epochs: int = 3) -> None:
    """Config and metrics.jsonl of each part (a plain run when parts == ("",)), and training.json for a detector."""
    for k, part in enumerate(parts):
        folder = run / part
        folder.mkdir(parents=True, exist_ok=True)
        root = "" if data is None else str(data)
        (folder / "config.yaml").write_text(f"task: {part or 'digits'}\ndata:\n  root: '{root}'\n")
        records = [
            {
                "epoch": e,
                "step": 4 * e,
                "train_loss": 1.0 / e + k,
                "samples_per_s": 100.0,
                "val_loss": 1.1 / e + k,
                "val_f1": 0.2 * e,
                "val_auc": None if e == 1 else 0.5 + 0.1 * e,
            }
            for e in range(1, epochs + 1)
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if parts != ("",):
        seconds = {"segment": 61.5, "classify": 30.25, "malignancy": 8.0}
        (run / "training.json").write_text(json.dumps({"seconds": seconds, **({"data": str(data)} if data else {})}))


def scan_entry(uid: str, source: str, findings: list[dict], files=()) -> dict:
    return {
        "seriesuid": uid,
        "source": source,
        "files": list(files),
        "candidates": len(findings),
        "seconds": 1.5,
        "warnings": [],
        "findings": findings,
    }


def finding(xyz, probability: float, diameter: float = 6.0, malignancy=None) -> dict:
    """A finding as `noduleflow detect` writes it in detections.json (`Finding.to_dict`)."""
    from noduleflow.detect.predictor import Finding

    return Finding(tuple(xyz), (0.0, 0.0, 0.0), probability, malignancy, diameter, 0.9, probability).to_dict()


def build_inputs(root: Path) -> Inputs:
    """Synthesize the data under ROOT, write the run, detections, evaluation and timings.json beside it."""
    from noduleflow.data.luna16 import find_scans
    from noduleflow.evaluate import evaluate
    from noduleflow.synth import synthesize

    data = root / "data"
    synthesize(data, scans=2, seed=3, size="small", scale=0.5, progress=False)
    scans, _ = find_scans(data)
    with open(data / "annotations.csv", newline="") as fh:
        nodules = list(csv.DictReader(fh))
    assert len(nodules) >= 3 and len(scans) == 2, "the fixture expects 2 scans holding 3+ nodules"

    # the first nodule of each scan is hit; scan 0 also has a false positive; every other nodule is missed
    doc_scans, written = [], []
    for i, (uid, path) in enumerate(sorted(scans.items())):
        mine = [n for n in nodules if n["seriesuid"] == uid]
        found = []
        if mine:
            xyz = tuple(float(mine[0][k]) for k in ("coordX", "coordY", "coordZ"))
            found.append(finding(xyz, 0.9 - 0.6 * i, float(mine[0]["diameter_mm"]), malignancy=0.25))
        if i == 0:
            found.append(finding((0.0, 0.0, float(mine[0]["coordZ"]) if mine else 0.0), 0.6))
        found.sort(key=lambda f: -f["probability"])
        written += [(uid, f["probability"]) for f in found]
        doc_scans.append(scan_entry(uid, str(path), found))
    detections = root / "runs" / "detector" / "detections"
    detections.mkdir(parents=True)
    (detections / "detections.json").write_text(json.dumps({"format": 2, "complete": True, "scans": doc_scans}))
    evaluation = root / "evaluation"
    evaluate(data, detections / "detections.json", evaluation, bootstrap=50)

    run = root / "runs" / "detector"
    write_run(run, data)
    (root / "timings.json").write_text(json.dumps(TIMINGS))  # the demo's OUT/timings.json, two folders above RUN
    return Inputs(root, data, run, detections, evaluation, nodules, written)
