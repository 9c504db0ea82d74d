"""3D Slicer markups (`.mrk.json`): one fiducial list per scan, one control point per finding.

Slicer's markups JSON (schema v1.0.3) stores control point positions in the coordinate system the
file names; we write "LPS" because noduleflow's world coordinates already are LPS millimetres
(ITK, DICOM and the LUNA16 CSVs all place +X to the patient's left, +Y posterior), so a finding's
`center_xyz` goes in unchanged and Slicer converts it to its RAS display on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from noduleflow.detect.predictor import Finding, ScanResult
from noduleflow.files import atomic_write

SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def finding_label(rank: int, finding: Finding) -> str:
    """Short text shown next to the point, e.g. ``F1 p=0.93 d=6.1mm m=0.12`` (no ``m=`` without a malignancy model)."""
    label = f"F{rank} p={finding.probability:.2f} d={finding.diameter_mm:.1f}mm"
    return label if finding.malignancy is None else f"{label} m={finding.malignancy:.2f}"


def finding_description(finding: Finding) -> str:
    """One sentence with every number of the finding, for Slicer's point description."""
    i, r, c = finding.center_irc
    text = (
        f"nodule score {finding.probability:.3f} (classifier {finding.classifier:.3f} x segmentation peak "
        f"{finding.segmentation:.3f}), equivalent-sphere diameter {finding.diameter_mm:.1f} mm"
    )
    if finding.malignancy is not None:
        text += f", P(malignant) {finding.malignancy:.3f}"
    return text + f", voxel (I, R, C) = ({i:.1f}, {r:.1f}, {c:.1f})"


def markups_document(result: ScanResult) -> dict:
    """The markups JSON of `result` as a dict: one "Fiducial" markup, points in result order (most probable first)."""
    points = [
        {
            "id": str(k),
            "label": finding_label(k, f),
            "description": finding_description(f),
            "associatedNodeID": "",
            "position": [float(v) for v in f.center_xyz],
            "selected": True,
            "locked": True,
            "visibility": True,
            "positionStatus": "defined",
        }
        for k, f in enumerate(result.findings, start=1)
    ]
    markup = {
        "type": "Fiducial",
        "name": f"noduleflow {result.series_uid}".strip(),
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": True,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "F%d",
        "controlPoints": points,
        "measurements": [],
        "display": {"visibility": True, "pointLabelsVisibility": True, "glyphType": "Sphere3D"},
    }
    return {"@schema": SCHEMA, "markups": [markup]}


def write_markups(result: ScanResult, path: str | Path) -> Path:
    """Write `markups_document(result)` to `path` (`<name>.mrk.json`) atomically; returns `path`."""
    return atomic_write(path, json.dumps(markups_document(result), indent=1) + "\n")
