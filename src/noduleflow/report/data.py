"""The report's "data" section: scans and nodules trained on and scored, and a few preview images.

Previews are the synth preview PNGs (DATA/preview/<seriesuid>.png, `noduleflow synth --preview`)
when a data folder has them; else the scans themselves, each drawn by `detect.render.write_scan_png`
through its annotated nodules, so that a report of real LUNA16 data shows its CT too.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from noduleflow.report import html
from noduleflow.report.inputs import RunInfo, data_root_of

MAX_PREVIEWS = 3


def data_section(run: RunInfo, scans: list[dict[str, Any]], evaluation: dict[str, Any]) -> str:
    """Counts of the training data, of the scans detected on and of the scans scored, then previews."""
    rows = []
    train_root = run.data_root
    if train_root is not None:
        rows.append(("training data", str(train_root), *_counts(train_root)))
    held_roots = list(dict.fromkeys(r for r in (data_root_of(s.get("source")) for s in scans) if r is not None))
    if scans:
        findings = sum(len(s["findings"]) for s in scans)
        rows.append(("detections", f"{len(scans)} scans detected on", len(scans), f"{findings} findings"))
    for root in held_roots:
        rows.append(("detection data", str(root), *_counts(root)))
    if evaluation:
        rows.append(
            ("evaluation", "scans and nodules scored", evaluation.get("scans", "-"), evaluation.get("nodules", "-"))
        )
    digits = any(c.get("task") == "digits" for c in run.configs.values())
    if digits:
        rows.insert(0, ("training data", "the built-in 8 x 8 handwritten digits (no CT)", "-", "-"))
    body = html.table(("what", "where", "scans", "nodules"), rows, numeric=(2, 3)) if rows else ""
    if train_root is None and not digits:
        body += html.note('The run names no data folder (no training.json "data" nor data.root in its config.yaml).')
    if digits:
        return body
    if not scans and run.detector:
        body += html.note(
            "No detections given: run `noduleflow detect DATA --run RUN -o DIR`, then `noduleflow report RUN --detections DIR`."
        )
    roots = [r for r in dict.fromkeys((train_root, *held_roots)) if r is not None and r.is_dir()]
    previews = _previews(roots)
    if previews:
        body += "<h3>Previews</h3>" + html.grid(previews)
    else:
        body += html.note(
            "No preview images: the data folders are not on this machine or hold no scans "
            "(`noduleflow synth DATA --preview` writes DATA/preview/)."
        )
    return body


def _counts(root: Path) -> tuple[object, object]:
    """(scans under subset*/, nodules of annotations.csv on those scans); '-' and a reason when unknown."""
    from noduleflow.data.luna16 import find_scans, read_nodules

    if not root.is_dir():
        return "-", "not on this machine"
    try:
        scans, _ = find_scans(root)
        if not scans and not (root / "annotations.csv").is_file():
            return "-", "not a LUNA16 folder (no subset*/ scans, no annotations.csv)"
        if not (root / "annotations.csv").is_file():
            return len(scans), "no annotations.csv"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows of series not on disk: expected with some subsets only
            nodules = read_nodules(root / "annotations.csv", scans, {})
    except Exception as err:  # noqa: BLE001 - a damaged folder is reported in the cell, never a traceback
        return "-", f"unreadable ({getattr(err, 'message', type(err).__name__)})"
    return len(scans), len(nodules)


def _previews(roots: list[Path]) -> list[str]:
    """Up to MAX_PREVIEWS figures: synth previews first, else scans drawn through their annotated nodules."""
    figures = []
    for root in roots:
        for path in sorted((root / "preview").glob("*.png"))[: MAX_PREVIEWS - len(figures)]:
            try:
                figures.append(html.image(path.read_bytes(), "preview", f"synth preview {path.name}"))
            except (OSError, ValueError) as err:
                figures.append(html.note(f"{path}: not readable ({type(err).__name__})"))
    if figures:
        return figures
    for root in roots:
        figures += _drawn(root, MAX_PREVIEWS - len(figures))
        if len(figures) >= MAX_PREVIEWS:
            break
    return figures


def _drawn(root: Path, count: int) -> list[str]:
    """Up to `count` scans of `root` drawn through their annotated nodules (the middle slice when none)."""
    from noduleflow.ct import read_volume
    from noduleflow.data.luna16 import find_scans, read_nodules

    try:
        scans, _ = find_scans(root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nodules = read_nodules(root / "annotations.csv", scans, {}) if (root / "annotations.csv").is_file() else ()
    except Exception:  # noqa: BLE001 - previews are optional: a damaged folder just shows none
        return []
    figures = []
    for uid, path in list(scans.items())[:count]:
        mine = [n for n in nodules if n.series_uid == uid][:2]
        try:
            volume = read_volume(path)
            png = render_marks(volume, uid, [(n.center_xyz, n.diameter_mm, 1.0, None) for n in mine], top=2)
        except Exception as err:  # noqa: BLE001 - one unreadable scan must not lose the others
            figures.append(html.note(f"{path.name}: not drawn ({getattr(err, 'message', type(err).__name__)})"))
            continue
        what = f"{len(mine)} annotated nodule(s) circled (p 1.00 marks an annotation)" if mine else "middle slice"
        figures.append(html.image(png, "scan preview", f"{uid}: {what}"))
    return figures


def render_marks(volume, uid: str, marks: list[tuple], *, top: int = 1) -> bytes:
    """PNG bytes of `volume` through each (center_xyz, diameter_mm, probability, malignancy) mark, drawn by
    `detect.render.write_scan_png` (one panel per mark, circled at its size; the middle slice when none)."""
    import numpy as np

    from noduleflow.detect.predictor import Finding, ScanResult
    from noduleflow.detect.render import write_scan_png

    findings = [
        Finding(
            tuple(float(v) for v in xyz),
            tuple(float(v) for v in volume.xyz_to_irc(np.asarray(xyz, dtype=np.float64), rounded=False)),
            float(p),
            mal,
            float(d),
            0.0,
            0.0,
        )
        for xyz, d, p, mal in marks
    ]
    result = ScanResult(uid, findings, tuple(volume.shape), warnings=[] if findings else ["middle slice"])
    with tempfile.TemporaryDirectory(prefix="noduleflow-report-") as tmp:
        path = write_scan_png(volume, result, Path(tmp) / "scan.png", top=top)
        return path.read_bytes()
