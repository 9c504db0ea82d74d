"""detections.json, defined once: its format version, its writer, and its reader with every check.

`noduleflow detect` writes it (`detect.pipeline`, after every scan) and reads it back to resume a
job; `noduleflow evaluate` scores it. Both go through this module, so a field the writer adds or
renames is one edit here and its tests, never a reader that silently disagrees. World mm, X, Y, Z::

    {"format": 2, "settings": {...}, "complete": bool, "failed": {source: reason},
     "scans": [{"seriesuid": "1.3.6...", "source": "/abs/scan.mhd", "files": ["png/x.png", ...],
                "candidates": int, "seconds": float, "warnings": [str],
                "findings": [{"coordX", "coordY", "coordZ", "probability", "malignancy", "diameter_mm",
                              "classifier", "segmentation"}]}]}

Format 2 added settings, complete, failed and the per-scan source and files. A hand-written file for
`evaluate` needs only ``{"scans": [{"seriesuid", "findings": [{coordX, coordY, coordZ, probability
[, malignancy]}]}]}``; `read(path, own=True)` (a resumed `detect` job) also requires what the job
relies on: this format, its settings and each scan's source and files.

A file that is not JSON, is truncated, nests too deeply or holds a value of the wrong type or range
(a non-finite coordinate, a probability outside [0, 1]) is one `CsvError` naming the file and the
entry: never a traceback, never a silently wrong score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from noduleflow.errors import CsvError
from noduleflow.files import atomic_open, output_error

NAME = "detections.json"
FORMAT = 2
COORDS = ("coordX", "coordY", "coordZ")
FIX = (
    'Write {"scans": [{"seriesuid": ..., "findings": [{"coordX": .., "coordY": .., "coordZ": .., '
    '"probability": ..}]}]} (see `noduleflow evaluate --help`).'
)
_OWN_FIX = "Delete it (or pass --restart) so that `noduleflow detect` writes a new one."


def document(settings: dict, complete: bool, failed: dict[str, str], scans: list[dict]) -> dict:
    """The whole file as a dict (format in the module docstring); scans: entries as `scan_entry` makes them."""
    return {"format": FORMAT, "settings": settings, "complete": complete, "failed": failed, "scans": scans}


def scan_entry(
    seriesuid: str,
    source: str,
    files: list[str],
    *,
    candidates: int,
    seconds: float,
    warnings: list[str],
    findings: list[dict],
) -> dict:
    """One scan's entry. files: per-scan outputs relative to OUT; findings: `Finding.to_dict()` of each."""
    return {
        "seriesuid": seriesuid,
        "source": source,
        "files": files,
        "candidates": candidates,
        "seconds": round(seconds, 3),
        "warnings": warnings,
        "findings": findings,
    }


def write(path: str | Path, doc: dict) -> None:
    """Write `doc` (from `document`) to `path` atomically; a failed write is one `OutputError` naming it."""
    path = Path(path)
    try:
        with atomic_open(path, "w") as fh:
            fh.write(json.dumps(doc, indent=1) + "\n")
    except OSError as err:
        raise output_error(err, path) from None


def read(path: str | Path, *, own: bool = False) -> dict:
    """The document at `path`, every field `evaluate` reads checked (module docstring); raises `CsvError`.

    own: the file must be one `detect` wrote in this format (settings, each scan's source and files),
    as a resumed job needs; without it, a hand-written {"scans": [...]} is accepted.
    """
    path = Path(path)
    fix = _OWN_FIX if own else FIX
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CsvError(
            f"cannot be read ({err.strerror or err})", path=path, fix="Check the path and its permissions."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        detail = str(err).splitlines()[0][:200] if not isinstance(err, RecursionError) else "nested too deeply"
        raise CsvError(f"is not valid JSON ({detail})", path=path, fix=fix) from None
    scans = doc.get("scans") if isinstance(doc, dict) else None
    if not isinstance(scans, list):
        raise CsvError('has no "scans" list at the top', path=path, fix=fix)
    if own and (doc.get("format") != FORMAT or not isinstance(doc.get("settings"), dict)):
        raise CsvError(f'is not format {FORMAT} with "settings" (another version wrote it)', path=path, fix=fix)
    for i, scan in enumerate(scans):
        _check_scan(scan, i, path, own)
    return doc


def _check_scan(scan, i: int, path: Path, own: bool) -> None:
    fix = _OWN_FIX if own else FIX
    findings = scan.get("findings") if isinstance(scan, dict) else None
    if not isinstance(findings, list) or not isinstance(scan.get("seriesuid"), str) or not scan["seriesuid"].strip():
        raise CsvError(f'scans[{i}] lacks a "seriesuid" string or a "findings" list', path=path, fix=fix)
    if own:
        files = scan.get("files")
        if not isinstance(scan.get("source"), str) or not isinstance(files, list):
            raise CsvError(f'scans[{i}] lacks a "source" string or a "files" list', path=path, fix=fix)
        if not all(isinstance(f, str) for f in files):
            raise CsvError(f"scans[{i}].files holds a name that is not a string", path=path, fix=fix)
    for j, finding in enumerate(findings):
        try:
            numbers = [finding[key] for key in (*COORDS, "probability")] + [finding.get("malignancy")]
            if any(isinstance(v, (bool, str)) for v in numbers):
                raise TypeError("a number written as text or a boolean")
            x, y, z, p = (float(v) for v in numbers[:4])
            mal = None if numbers[4] is None else float(numbers[4])
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            raise CsvError(
                f"scans[{i}].findings[{j}] lacks a numeric coordX, coordY, coordZ or probability "
                "(or has a non-numeric malignancy)",
                path=path,
                fix=fix,
            ) from None
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise CsvError(f"scans[{i}].findings[{j}] holds a non-finite coordinate", path=path, fix=fix)
        if not (0 <= p <= 1 and (mal is None or 0 <= mal <= 1)):
            raise CsvError(
                f"scans[{i}].findings[{j}] has a probability or malignancy outside [0, 1]",
                path=path,
                fix="Write probabilities as numbers from 0 to 1 (malignancy may be null).",
            )
