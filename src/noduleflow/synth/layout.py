"""The LUNA16 layout on disk: subsetN/<seriesuid>.mhd/.raw, the four CSVs, and per-scan records.

Every file is written to a temporary name in the same folder tree and renamed into place, so an
interrupted run leaves whole files or none (the .raw is renamed before its .mhd: a scan counts
as present once its .mhd is). After a scan is written, `.synth/<seriesuid>.json` records the
generator key (what made it), the SHA-256 of its files and its CSV rows; a later run with the
same key and intact files skips the scan without planning or rendering it again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from noduleflow.ct import CtVolume, write_volume
from noduleflow.errors import NoduleflowError
from noduleflow.files import atomic_write
from noduleflow.synth.plan import ScanPlan

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
MALIGNANCY_COLUMNS = (*ANNOTATION_COLUMNS, "mal_bool")
CSV_FILES = {
    "annotations": ("annotations.csv", ANNOTATION_COLUMNS),
    "excluded": ("annotations_excluded.csv", ANNOTATION_COLUMNS),
    "candidates": ("candidates.csv", CANDIDATE_COLUMNS),
    "malignancy": ("annotations_with_malignancy.csv", MALIGNANCY_COLUMNS),
}
RECORDS = ".synth"


def scan_path(out: Path, subset: int, uid: str) -> Path:
    return Path(out) / f"subset{subset}" / f"{uid}.mhd"


def plan_rows(plan: ScanPlan) -> dict[str, list[list]]:
    """The CSV rows of one scan, keyed like `CSV_FILES`; coordinates in world mm (X, Y, Z), 4 decimals."""
    uid = plan.series_uid

    def xyz(p) -> list[str]:
        return [f"{v:.4f}" for v in plan.world(p)]

    annotations = [[uid, *xyz(n.centre), f"{n.diameter_mm:.4f}"] for n in plan.nodules]
    return {
        "annotations": annotations,
        "excluded": [[uid, *xyz(n.centre), f"{n.diameter_mm:.4f}"] for n in plan.excluded],
        "candidates": [[uid, *xyz(p), str(int(c))] for p, c in zip(plan.candidates_xyz, plan.candidates_class)],
        "malignancy": [[*row, str(int(n.malignant))] for row, n in zip(annotations, plan.nodules)],
    }


def write_csvs(out: Path, rows: dict[str, list[list]]) -> dict[str, Path]:
    """Write the four LUNA16 CSVs under `out` from rows keyed like `CSV_FILES`; returns their paths."""
    paths = {}
    for name, (filename, columns) in CSV_FILES.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows[name])
        paths[name] = write_atomic(Path(out) / filename, buffer.getvalue().encode())
    return paths


def write_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to `path` through a temporary file in the same folder and a rename (`files.atomic_write`)."""
    return atomic_write(path, data)


def write_scan(out: Path, volume: CtVolume, mhd: Path, key: str, rows: dict) -> dict:
    """Write `volume` as `mhd` (+ .raw) atomically, then its record; returns the record.

    Raises `NoduleflowError` when the disk refuses (full, read-only), naming the scan.
    """
    tmp_dir = Path(out) / RECORDS / f"tmp-{volume.series_uid}-{os.getpid()}"
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        write_volume(volume, tmp_dir / mhd.name)
        mhd.parent.mkdir(parents=True, exist_ok=True)
        files = {}
        # Hand-written renames, not files.atomic_path: one writer makes both files and the header names the
        # .raw by its final name, so both are written under their final names in a private folder, then moved.
        for suffix in (".raw", ".mhd"):  # data first: the header makes the scan visible
            final = mhd.with_suffix(suffix)
            files[final.relative_to(out).as_posix()] = _sha256(tmp_dir / final.name)
            os.replace(tmp_dir / final.name, final)
        record = {"key": key, "files": files, "rows": rows}
        write_atomic(_record_path(out, volume.series_uid), json.dumps(record).encode())
    except OSError as err:
        raise NoduleflowError(
            f"cannot be written ({err.strerror or err})",
            path=mhd,
            fix="Free some disk space or choose another output folder.",
        ) from err
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return record


def current_record(out: Path, uid: str, mhd: Path, key: str) -> dict | None:
    """The record of scan `uid` if it was made by `key`, sits at `mhd` and its files hash as recorded; else None."""
    try:
        record = json.loads(_record_path(out, uid).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or mhd.relative_to(out).as_posix() not in record.get("files", {}):
        return None
    for rel, digest in record["files"].items():
        path = Path(out) / rel
        if not path.is_file() or _sha256(path) != digest:
            return None
    return record


def remove_stale(out: Path, keep: dict[str, Path]) -> int:
    """Delete scans this generator wrote earlier that the current run does not make (other uid or subset).

    keep maps each current uid to its .mhd path. Only files listed in a record are touched, so
    anything else in `out` is left alone. Returns the number of scans removed. Also clears
    temporary folders left by an interrupted run.
    """
    records = Path(out) / RECORDS
    removed = 0
    for tmp in records.glob("tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for path in sorted(records.glob("*.json")):
        uid = path.stem
        try:
            files = json.loads(path.read_text()).get("files", {})
        except (OSError, ValueError):
            files = {}
        wanted = keep.get(uid)
        if wanted is not None and wanted.relative_to(out).as_posix() in files:
            continue
        for rel in files:
            (Path(out) / rel).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        removed += wanted is None
    return removed


def code_digest() -> str:
    """SHA-256 of what decides a scan's bytes (this package, the CT writers and numpy): part of every key."""
    h = hashlib.sha256(f"{np.__version__}".encode())
    roots = [Path(__file__).parent, Path(__file__).parent.parent / "ct"]
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _record_path(out: Path, uid: str) -> Path:
    return Path(out) / RECORDS / f"{uid}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
