"""Results people open in their own tools, written beside `submission.csv` for each scan.

`write_scan_outputs(OUT, volume, result, source)` writes, with <name> = `files.safe_name` of the
series uid (or of the scan's file name when it has none)::

    markups/<name>.mrk.json   3D Slicer fiducials, LPS mm, one labelled point per finding (`markups`)
    masks/<name>.nii.gz       the candidate mask in the scan's geometry, when the result kept one (`mask`)
    sr/<name>.dcm             a DICOM SR measurement report, when SOURCE is a DICOM series folder (`sr`)

Every file is written atomically. `noduleflow detect` calls it once per scan; the server for each finished job.
"""

from __future__ import annotations

from pathlib import Path

from noduleflow.ct import CtVolume
from noduleflow.detect.outputs.markups import markups_document, write_markups
from noduleflow.detect.outputs.mask import write_mask
from noduleflow.detect.predictor import ScanResult
from noduleflow.files import safe_name

MARKUPS_DIR, MASKS_DIR, SR_DIR = "markups", "masks", "sr"


def scan_name(result: ScanResult, source: str | Path) -> str:
    """The file name stem of a scan's outputs: its series uid (`series_uid`), through `safe_name`."""
    return safe_name(series_uid(result, source))


def series_uid(result: ScanResult, source: str | Path) -> str:
    """The scan's series uid as written in the results: the header's, else the file name without suffixes."""
    from noduleflow.data.luna16 import SCAN_SUFFIXES

    name = Path(source).name
    stem = next((name[: -len(s)] for s in SCAN_SUFFIXES if name.lower().endswith(s) and len(name) > len(s)), name)
    return result.series_uid or stem or "scan"


def write_scan_outputs(out: str | Path, volume: CtVolume, result: ScanResult, source: str | Path) -> list[Path]:
    """Write one scan's markups, mask and SR under `out` (module docstring); returns the paths written.

    volume: the scan `result` was predicted on (the mask's geometry). source: the scan's file or
    DICOM series folder (a folder gets an SR). The mask is `result.candidate_mask` when present.
    """
    out, source = Path(out), Path(source)
    name = scan_name(result, source)
    (out / MARKUPS_DIR).mkdir(parents=True, exist_ok=True)
    written = [write_markups(result, out / MARKUPS_DIR / f"{name}.mrk.json")]
    mask = getattr(result, "candidate_mask", None)
    if mask is not None:
        (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
        written.append(write_mask(volume, mask, out / MASKS_DIR / f"{name}.nii.gz"))
    if source.is_dir():
        from noduleflow.detect.outputs.sr import write_sr  # highdicom is imported only for DICOM sources

        (out / SR_DIR).mkdir(parents=True, exist_ok=True)
        sr = write_sr(result, source, out / SR_DIR / f"{name}.dcm")
        written += [sr] if sr is not None else []
    return written


__all__ = [
    "MARKUPS_DIR",
    "MASKS_DIR",
    "SR_DIR",
    "markups_document",
    "scan_name",
    "write_markups",
    "write_mask",
    "write_scan_outputs",
]
