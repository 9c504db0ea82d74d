"""What the report reads: the run folder (its parts, training.json, configs) and the detections and evaluation.

A run is either a detector (RUN/segment/, RUN/classify/, RUN/malignancy/, each a `noduleflow train`
run, and RUN/training.json) or one plain run (RUN/config.yaml and RUN/metrics.jsonl, e.g. digits).
Every JSON or YAML file is read defensively: the report describes what it finds and never fails on
a damaged file (the one error is a RUN that is not a run at all).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noduleflow.errors import NoduleflowError

log = logging.getLogger("noduleflow")

PARTS = ("segment", "classify", "malignancy")
_SUBSET = re.compile(r"subset\d+")


class ReportError(NoduleflowError):
    """A run, detections or evaluation folder that the report cannot describe."""


@dataclass
class RunInfo:
    """A run folder: its parts (name -> folder holding config.yaml / metrics.jsonl), training.json, data root."""

    dir: Path
    parts: dict[str, Path]
    training: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def detector(self) -> bool:
        return any(name in PARTS for name in self.parts)

    @property
    def data_root(self) -> Path | None:
        """The training data folder: training.json's "data", else the first part's config data.root."""
        root = self.training.get("data")
        if not isinstance(root, str) or not root:
            roots = [
                (c.get("data") or {}).get("root") for c in self.configs.values() if isinstance(c.get("data"), dict)
            ]
            root = next((r for r in roots if isinstance(r, str) and r), None)
        return Path(root) if root else None


def load_run(run_dir: str | Path) -> RunInfo:
    """The parts of `run_dir`; a `ReportError` when it is not a folder `noduleflow train` wrote."""
    run_dir = Path(run_dir)
    fix = "Pass a run folder that `noduleflow train` wrote, e.g. runs/detector (holding segment/, classify/, ...)."
    if not run_dir.is_dir():
        raise ReportError("is not a folder" if run_dir.exists() else "does not exist", path=run_dir, fix=fix)
    marks = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt")
    parts = {p: run_dir / p for p in PARTS if any((run_dir / p / m).is_file() for m in marks)}
    if not parts and any((run_dir / m).is_file() for m in marks):
        parts = {run_dir.name: run_dir}
    training = read_json(run_dir / "training.json")
    if not parts and not training:
        raise ReportError(
            "is not a run folder (no config.yaml or metrics.jsonl in it or in segment/, classify/, malignancy/)",
            path=run_dir,
            fix=fix,
        )
    return RunInfo(run_dir, parts, training, {name: read_yaml(d / "config.yaml") for name, d in parts.items()})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is absent or not a JSON object (logged)."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        log.warning("report: %s is not readable JSON (%s); left out", path, type(err).__name__)
        return {}
    return doc if isinstance(doc, dict) else {}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file, or {} when it is absent or damaged (logged)."""
    if not path.is_file():
        return {}
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        log.warning("report: %s is not readable YAML (%s); left out", path, type(err).__name__)
        return {}
    return doc if isinstance(doc, dict) else {}


def check_folder(path: str | Path | None, what: str, fix: str) -> Path | None:
    """`path` as a Path when given; a `ReportError` when given but not a folder (a typo must not pass silently)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        raise ReportError(
            f"is not a {what} folder ({'not a folder' if path.exists() else 'does not exist'})", path=path, fix=fix
        )
    return path


def detection_scans(detections: Path | None) -> list[dict[str, Any]]:
    """The scans of DETECTIONS/detections.json that have a series uid and a findings list (others skipped)."""
    if detections is None:
        return []
    doc = read_json(detections / "detections.json")
    scans = doc.get("scans") if isinstance(doc.get("scans"), list) else []
    return [
        s
        for s in scans
        if isinstance(s, dict) and isinstance(s.get("seriesuid"), str) and isinstance(s.get("findings"), list)
    ]


def data_root_of(source: object) -> Path | None:
    """The LUNA16 folder holding a scan file (ROOT/subsetN/scan.mhd or ROOT/scan.mhd): where annotations.csv is."""
    if not isinstance(source, str) or not source:
        return None
    parent = Path(source).parent
    for root in ((parent.parent,) if _SUBSET.fullmatch(parent.name) else ()) + (parent,):
        if (root / "annotations.csv").is_file():
            return root
    return None


def inside(folder: Path, relative: object) -> Path | None:
    """FOLDER/relative when it is a file that stays inside FOLDER (a JSON file names it: untrusted)."""
    if not isinstance(relative, str) or not relative:
        return None
    try:
        path = (folder / relative).resolve()
        path.relative_to(folder.resolve())
    except (ValueError, OSError):
        return None
    return path if path.is_file() else None
