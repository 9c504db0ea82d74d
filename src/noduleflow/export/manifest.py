"""RUN/export/manifest.json: what `noduleflow export` wrote and what the ONNX runtime loads, without torch.

One entry per exported file::

    {"part": "segment" | "classify" | "malignancy" | "joint", "format": "onnx" | "int8" | "pt2",
     "file": "segment.onnx", "sha256": ..., "bytes": ...,
     "input": InputContract.to_dict(), "output": what the outputs mean,
     "source": {"file": "segment/best.pt", "sha256": ...},      the checkpoint it was exported from
     "parity": {"compared": ..., "on": ..., "max_abs": ..., "mean_abs": ..., "tolerance": ...}}

The "joint" part (the classifier and malignancy in one net, `detect.models.JointNet`) comes from two
checkpoints: its entry adds "sources", both of them, and each is checked.

Beside "models", "measured_malignancy" holds the run's measured malignancy model (`detect.measure`: a
logistic regression's few numbers, copied from malignancy/measured.json) where the run has one.

Every file is checked against its checksum before it is loaded, and its source against the run's
current best.pt, so a damaged, truncated or stale export is a `CheckpointError` naming the file
and the fix instead of a crash or, worse, wrong findings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from noduleflow.errors import CheckpointError
from noduleflow.files import atomic_write

EXPORT_DIR, MANIFEST_NAME, FORMAT = "export", "manifest.json", 1
FORMATS = ("onnx", "int8", "pt2")
MEASURED_KEY = "measured_malignancy"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_fix(run_dir: str | Path) -> str:
    """The fix every export error names: export again, or run without the exports."""
    return f"Export the run again with `noduleflow export {run_dir}`, or detect with `--runtime torch`."


def read_manifest(run_dir: str | Path) -> dict | None:
    """RUN/export/manifest.json as a dict, None when the run has no export; a damaged one raises `CheckpointError`."""
    path = Path(run_dir) / EXPORT_DIR / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("models"), list):
            raise ValueError("not a noduleflow export manifest")
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read the export manifest ({err})", path=path, fix=export_fix(run_dir)) from None
    return doc


def write_manifest(run_dir: str | Path, models: list[dict], measured: dict | None = None) -> Path:
    """Write RUN/export/manifest.json (atomically) listing `models` (entries as in the module docstring) and the
    `measured` malignancy model's dict, if any."""
    doc = {"format": FORMAT, "models": sorted(models, key=lambda m: (m["part"], FORMATS.index(m["format"])))}
    if measured is not None:
        doc[MEASURED_KEY] = measured
    path = atomic_write(Path(run_dir) / EXPORT_DIR / MANIFEST_NAME, json.dumps(doc, indent=1) + "\n")
    os.chmod(path, 0o644)  # readable like the exports beside it (a server may run as another user)
    return path


def find_entry(doc: dict | None, part: str, fmt: str) -> dict | None:
    """The manifest's entry for `part` in format `fmt`, or None."""
    return next((m for m in (doc or {}).get("models", []) if m.get("part") == part and m.get("format") == fmt), None)


def verified_file(run_dir: str | Path, entry: dict) -> Path:
    """The path of `entry`'s file after checking that it exists, matches its checksum, and was exported from the
    run's current checkpoint; else `CheckpointError` naming the file and the fix."""
    run_dir = Path(run_dir)
    path = run_dir / EXPORT_DIR / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"is missing (listed in {MANIFEST_NAME})", path=path, fix=export_fix(run_dir))
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise CheckpointError(
            f"is damaged or truncated (its checksum differs from {MANIFEST_NAME}'s)", path=path, fix=export_fix(run_dir)
        )
    for source in entry.get("sources") or [entry["source"]]:
        if (run_dir / source["file"]).is_file() and sha256_file(run_dir / source["file"]) != source["sha256"]:
            raise CheckpointError(
                f"was exported from an older {source['file']} (retrained since)", path=path, fix=export_fix(run_dir)
            )
    return path
