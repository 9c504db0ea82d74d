"""`noduleflow detect`: run the `Predictor` over one scan or a LUNA16 folder and write the results.

SOURCE is a scan file (.mhd, .mha, .nii, .nii.gz), a DICOM series folder, or a LUNA16-layout
folder (its subset*/ scans). OUT receives::

    submission.csv      seriesuid,coordX,coordY,coordZ,probability   (LUNA16 format, world mm)
    detections.json     {"scans": [{"seriesuid", "findings": [{coordX.., probability, malignancy, diameter_mm}]}]}
    png/<seriesuid>.png axial slices through each scan's top findings
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from noduleflow.ct import read_volume
from noduleflow.detect.outputs import write_scan_outputs
from noduleflow.detect.predictor import Predictor, ScanResult
from noduleflow.detect.render import write_scan_png
from noduleflow.errors import ScanError

SUBMISSION_CSV, DETECTIONS_JSON, PNG_DIR = "submission.csv", "detections.json", "png"


@dataclass(frozen=True)
class DetectSummary:
    """What one `detect` call did: per-scan results and where they were written."""

    out: Path
    results: tuple[ScanResult, ...]
    seconds: float

    def describe(self) -> str:
        n = len(self.results)
        findings = sum(len(r.findings) for r in self.results)
        warned = sum(bool(r.warnings) for r in self.results)
        per_scan = sum(r.seconds for r in self.results) / max(n, 1)
        return (f"detected {findings} finding(s) in {n} scan(s) in {self.seconds:.1f} s ({per_scan:.1f} s per scan)"
                + (f", {warned} scan(s) with warnings" if warned else "")
                + f" -> {self.out / SUBMISSION_CSV}, {self.out / DETECTIONS_JSON}, {self.out / PNG_DIR}/")


def scan_sources(source: str | Path) -> list[Path]:
    """The scans SOURCE names: itself (a file or a DICOM folder), or the subset*/ scans of a LUNA16 folder."""
    from noduleflow.data.luna16 import find_scans

    source = Path(source)
    if not source.exists():
        raise ScanError("does not exist", path=source, fix="Pass a scan (.mhd/.mha/.nii/.nii.gz), a DICOM folder or a LUNA16 folder.")
    if source.is_dir() and any(p.is_dir() and p.name.startswith("subset") for p in source.iterdir()):
        scans, _ = find_scans(source)
        if not scans:
            raise ScanError("holds subset*/ folders but no scans in them", path=source, fix="Check the download, or pass one scan file.")
        return list(scans.values())
    return [source]


def detect(source: str | Path, run: str | Path, out: str | Path, *, progress: bool = True, **predictor_kwargs) -> DetectSummary:
    """Detect nodules in every scan of `source` with the detector run folder `run`; write OUT (module docstring)."""
    start = time.perf_counter()
    paths = scan_sources(source)
    predictor = Predictor.from_run(run, **predictor_kwargs)
    out = Path(out)
    (out / PNG_DIR).mkdir(parents=True, exist_ok=True)
    results = []
    with Progress(TextColumn("[bold]detect"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[scan]}"),
                  TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("scans", total=len(paths), scan="")
        for path in paths:
            bar.update(task, scan=path.name)
            volume = read_volume(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # kept in result.warnings and printed below, once
                result = predictor.predict(volume)
            write_scan_png(volume, result, out / PNG_DIR / f"{result.series_uid or path.stem}.png")
            write_scan_outputs(out, volume, result, path)  # markups/, masks/ (when kept), sr/ (DICOM sources)
            for text in result.warnings:
                bar.console.print(f"[yellow]warning:[/yellow] {text}")
            bar.console.print(f"{result.series_uid[-24:]}: {len(result.findings)} finding(s) from {result.candidates} "
                              f"candidate(s) in {result.seconds:.1f} s", highlight=False)
            results.append(result)
            bar.advance(task)
    write_results(results, out)
    return DetectSummary(out, tuple(results), time.perf_counter() - start)


def write_results(results: list[ScanResult], out: str | Path) -> tuple[Path, Path]:
    """OUT/submission.csv and OUT/detections.json of `results`, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [("seriesuid", "coordX", "coordY", "coordZ", "probability")]
    rows += [(r.series_uid, *(f"{v:.3f}" for v in f.center_xyz), f"{f.probability:.6f}") for r in results for f in r.findings]
    doc = {"scans": [{"seriesuid": r.series_uid, "findings": [f.to_dict() for f in r.findings]} for r in results]}
    csv_path, json_path = out / SUBMISSION_CSV, out / DETECTIONS_JSON
    _atomic(csv_path, lambda fh: csv.writer(fh, lineterminator="\n").writerows(rows))
    _atomic(json_path, lambda fh: fh.write(json.dumps(doc, indent=1) + "\n"))
    return csv_path, json_path


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        write(fh)
    os.replace(tmp, path)
