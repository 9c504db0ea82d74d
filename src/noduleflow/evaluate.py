"""`noduleflow evaluate`: score a LUNA16 submission against a data folder (FROC, CPM, malignancy AUC).

DATA is a LUNA16-layout folder. annotations.csv is required; annotations_excluded.csv (findings
that count neither as hit nor as false positive) and annotations_with_malignancy.csv (for the
malignancy AUC) are read when present. The scans scored, each counting in FPs per scan even
without marks, are the first of:

1. DATA/seriesuids.csv, one series UID a line (as in the LUNA16 evaluation kit): to score one fold;
2. the scans under DATA/subset*/;
3. the series named in annotations.csv and candidates.csv, with a warning: a scan named in
   neither is not counted, which raises the FPs per scan.

SUBMISSION is the challenge's CSV, world mm::

    seriesuid,coordX,coordY,coordZ,probability[,malignancy]

or a detections JSON, the format `noduleflow detect` writes (`noduleflow.detect.detections_file`;
world mm, X, Y, Z like the CSVs)::

    {"scans": [{"seriesuid": "1.3.6.1.4...",
                "findings": [{"coordX": -56.1, "coordY": 67.2, "coordZ": -101.4,
                              "probability": 0.97, "malignancy": 0.12, "diameter_mm": 6.3}]}]}

`probability` is the nodule score the FROC ranks, in [0, 1] (higher = surer); `malignancy` (optional,
may be empty or null) is the probability in [0, 1] that the nodule is malignant; `diameter_mm`
(optional) is the estimated diameter, not used in scoring. Only SUBMISSION is read: the malignancy
AUC needs a malignancy column (or the detections JSON); a detections.json lying beside a CSV is
never consulted, so a stale or broken one cannot change the CSV's score. Every value is checked:
a non-finite coordinate, a probability or malignancy outside [0, 1], a row without a series, and
in the annotations a diameter that is not a size (0, negative, infinite) are each a `CsvError`
naming the file and the row, never a silently wrong score.

The malignancy ROC AUC of the hit nodules is printed beside the diameter-only baseline's on the same
nodules (the score is each nodule's diameter in annotations_with_malignancy.csv, the row its label comes
from), both with bootstrap intervals over the same resamples of those nodules, and their difference:
a learned model is only worth it where it beats a ruler (`metrics.malignancy`).

Writes OUT/froc.json and OUT/froc.png (OUT defaults to the submission's folder).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.data.luna16 import (
    Nodule,
    find_scans,
    nearest,
    read_csv,
    read_nodules,
    require_file,
)
from noduleflow.detect import detections_file
from noduleflow.errors import CsvError
from noduleflow.figures import save_png
from noduleflow.files import atomic_write, output_error, writable_dir
from noduleflow.metrics.froc import BAND_FPS, FP_RATES, MAX_MARKS, FrocResult, Mark, froc
from noduleflow.metrics.malignancy import MalignancyScore, malignancy_auc

_XYZ = ("coordX", "coordY", "coordZ")
_SUBMISSION_COLUMNS = ("seriesuid", *_XYZ, "probability")
_RATE_LABELS = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` scored and wrote."""

    froc: FrocResult
    malignancy: MalignancyScore | None  # None when no mark or no nodule carries malignancy
    series_from: str  # where the list of scans came from (see the module docstring)
    json_path: Path
    png_path: Path

    def to_dict(self) -> dict:
        mal = None if self.malignancy is None else self.malignancy._asdict()
        return {"series_from": self.series_from, **self.froc.to_dict(), "malignancy": mal}

    def describe(self) -> str:
        """Counts, the malignancy AUC and the files written, a line each (printed under `table`)."""
        r, m = self.froc, self.froc.matching
        lines = [
            f"{r.n_scans} scans (from {self.series_from}), {r.n_nodules} nodules: {m.n_hits} hit, "
            f"{m.n_false_positives} false positives, {m.n_ignored} marks on excluded findings ignored"
        ]
        if m.n_dropped:
            lines.append(
                f"{m.n_dropped} marks beyond the top {m.max_marks} of their scan were dropped, as the LUNA16 script drops them"
            )
        if self.malignancy is not None:
            lines.append(describe_malignancy(self.malignancy))
        lines.append(f"wrote {self.json_path} and {self.png_path}")
        return "\n".join(lines)

    def table(self):
        """A rich table: the sensitivity at each of the seven FP rates and the CPM, with intervals."""
        from rich.table import Table

        r, _m = self.froc, self.froc.matching
        pct = f"{r.confidence:.0%} CI" if r.bootstrap else "CI (no bootstrap)"
        table = Table(title="LUNA16 FROC", title_justify="left")
        table.add_column("FPs/scan", justify="right")
        table.add_column("sensitivity", justify="right")
        table.add_column(pct, justify="right")
        for label, sens, (lo, hi) in zip(_RATE_LABELS, r.sensitivities, r.sensitivity_ci):
            table.add_row(label, f"{sens:.3f}", _interval(lo, hi))
        table.add_section()
        table.add_row("[bold]CPM[/bold]", f"[bold]{r.cpm:.3f}[/bold]", _interval(*r.cpm_ci))
        return table


def evaluate(
    data: str | Path,
    submission: str | Path,
    out: str | Path | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    max_marks: int = MAX_MARKS,
) -> Evaluation:
    """Score `submission` on the scans of `data`; write OUT/froc.json and OUT/froc.png."""
    data, submission = Path(data), Path(submission)
    marks = read_submission(submission)
    series, series_from = _series(data)
    nodules, excluded, baseline_mm = _annotations(data, series)
    if not nodules:
        warnings.warn(
            f"{data / 'annotations.csv'}: no nodule in the {len(series)} scan(s) scored, so every sensitivity and "
            "the CPM are undefined (NaN); check that the annotations belong to these scans",
            stacklevel=2,
        )
    _check_series(marks, series, submission)
    out = writable_dir(out if out is not None else submission.parent)  # before the bootstrap, not after it
    result = froc(marks, nodules, series, excluded=excluded, max_marks=max_marks, bootstrap=bootstrap, seed=seed)

    malignancy = None
    if any(mk.malignancy is not None for mk in marks):
        diameters = [baseline_mm.get(n, n.diameter_mm) for n in result.matching.nodules]
        malignancy = malignancy_auc(result.matching, marks, diameters=diameters, bootstrap=bootstrap, seed=seed)
    if malignancy is not None and malignancy.nodules == 0:
        malignancy = None

    report = Evaluation(result, malignancy, series_from, out / "froc.json", out / "froc.png")
    try:
        atomic_write(report.json_path, json.dumps(_json_safe(report.to_dict()), indent=1) + "\n")
    except OSError as err:
        raise output_error(err, report.json_path) from None
    plot_froc(result, report.png_path)
    return report


def read_submission(path: str | Path) -> list[Mark]:
    """The marks of a submission CSV (optional `malignancy` column) or of a detections JSON."""
    path = Path(path)
    if not path.is_file():
        raise CsvError(
            "is a folder, not a file" if path.is_dir() else "does not exist",
            path=path,
            fix="Pass the submission CSV (or detections JSON) that `noduleflow detect` wrote.",
        )
    if path.suffix.lower() == ".json":
        return read_detections(path)
    import pandas as pd

    frame = read_csv(path, _SUBMISSION_COLUMNS)
    values = frame[list(_SUBMISSION_COLUMNS[1:])].to_numpy(np.float64)  # (K, 4); read_csv checked the coordinates
    bad = np.flatnonzero(~((values[:, 3] >= 0) & (values[:, 3] <= 1)))
    if bad.size:
        raise CsvError(
            f"row {bad[0] + 2} has probability {values[bad[0], 3]:g}, outside [0, 1]",
            path=path,
            fix="Write each mark's probability as a number from 0 to 1.",
        )
    malignancy = [None] * len(frame)
    if "malignancy" in frame.columns:
        numbers = pd.to_numeric(frame["malignancy"], errors="coerce")
        wrong = np.flatnonzero((numbers.isna() & frame["malignancy"].notna()).to_numpy())
        if wrong.size:
            raise CsvError(
                f"row {wrong[0] + 2} has a non-numeric malignancy {frame['malignancy'].iloc[wrong[0]]!r}",
                path=path,
                fix="Write a probability in [0, 1], or leave the cell empty.",
            )
        outside = np.flatnonzero((numbers.notna() & ~numbers.between(0, 1)).to_numpy())
        if outside.size:
            raise CsvError(
                f"row {outside[0] + 2} has malignancy {numbers.iloc[outside[0]]:g}, outside [0, 1]",
                path=path,
                fix="Write a probability in [0, 1], or leave the cell empty.",
            )
        malignancy = [None if math.isnan(v) else float(v) for v in numbers]
    return [
        Mark(uid, (x, y, z), p, mal) for uid, (x, y, z, p), mal in zip(frame["seriesuid"], values.tolist(), malignancy)
    ]


def read_detections(path: str | Path) -> list[Mark]:
    """The marks of a detections JSON (format in the module docstring), checked by `detect.detections_file.read`."""
    path = Path(path)
    doc = detections_file.read(path)
    if doc.get("complete") is False:
        warnings.warn(
            f"{path}: written by a `noduleflow detect` run that has not finished (or had scans fail); "
            "scans without results count their nodules as missed",
            stacklevel=3,
        )
    return [
        Mark(
            scan["seriesuid"].strip(),
            tuple(float(f[k]) for k in _XYZ),
            float(f["probability"]),
            None if f.get("malignancy") is None else float(f["malignancy"]),
        )
        for scan in doc["scans"]
        for f in scan["findings"]
    ]


def plot_froc(result: FrocResult, path: str | Path) -> Path:
    """FROC curve on log-2 FPs per scan (1/8..8) with the bootstrap band, the seven points and the CPM."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.subplots()
    if result.bootstrap:
        ax.fill_between(
            BAND_FPS,
            result.band_lower,
            result.band_upper,
            color="tab:blue",
            alpha=0.2,
            lw=0,
            label=f"{result.confidence:.0%} bootstrap band ({result.bootstrap} resamplings)",
        )
    inside = (result.fps > FP_RATES[0]) & (result.fps < FP_RATES[-1])  # the curve's own points, steps and all
    ends = np.interp([FP_RATES[0], FP_RATES[-1]], result.fps, result.sensitivity)
    ax.plot(
        np.r_[FP_RATES[0], result.fps[inside], FP_RATES[-1]],
        np.r_[ends[0], result.sensitivity[inside], ends[1]],
        color="tab:blue",
        lw=2,
        label="FROC",
    )
    ax.plot(FP_RATES, result.sensitivities, "o", color="tab:red", clip_on=False, label="CPM operating points")
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0], FP_RATES[-1])
    ax.set_xticks(FP_RATES, _RATE_LABELS)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ci = (
        ""
        if math.isnan(result.cpm_ci[0])
        else f" ({result.confidence:.0%} CI {result.cpm_ci[0]:.3f}-{result.cpm_ci[1]:.3f})"
    )
    ax.set_title(f"LUNA16 FROC: CPM {result.cpm:.3f}{ci}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def _series(data: Path) -> tuple[tuple[str, ...], str]:
    """The scans to score and where that list came from (see the module docstring)."""
    listed = data / "seriesuids.csv"
    if listed.is_file():
        try:
            text = listed.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CsvError("is not a text file", path=listed, fix="Write one series UID a line.") from None
        uids = [line.split(",")[0].strip() for line in text.splitlines() if line.strip()]
        uids = [u for u in uids if u != "seriesuid"]
        if not uids:
            raise CsvError(
                "lists no series",
                path=listed,
                fix="Write one series UID a line, or delete it to score the scans under subset*/.",
            )
        return tuple(dict.fromkeys(uids)), listed.name
    scans, _ = find_scans(data)
    if scans:
        return tuple(sorted(scans)), "subset*/"
    named = set(read_csv(require_file(data, "annotations.csv"), ("seriesuid",))["seriesuid"])
    if (data / "candidates.csv").is_file():
        named |= set(read_csv(data / "candidates.csv", ("seriesuid",))["seriesuid"])
    warnings.warn(
        f"{data}: no seriesuids.csv and no scans under subset*/; scoring the {len(named)} series named in the CSVs "
        "(a scan named in none of them is not counted in FPs per scan)",
        stacklevel=3,
    )
    return tuple(sorted(named)), "annotations.csv + candidates.csv"


def _annotations(data: Path, series: tuple[str, ...]) -> tuple[list[Nodule], list[Nodule], dict[Nodule, float]]:
    """Nodules (with `malignant` joined from annotations_with_malignancy.csv when present), excluded findings, and
    the diameter (mm) of the malignancy row joined to each nodule: the baseline's score, from the same row as the
    label (in LUNA16 that file's diameters are not annotations.csv's; the FROC keeps annotations.csv's)."""
    keep, skipped = dict.fromkeys(series), {}
    baseline_mm: dict[Nodule, float] = {}
    nodules = list(read_nodules(require_file(data, "annotations.csv"), keep, skipped))
    excluded_csv = data / "annotations_excluded.csv"
    excluded = list(read_nodules(excluded_csv, keep, skipped, excluded=True)) if excluded_csv.is_file() else []
    malignancy_csv = data / "annotations_with_malignancy.csv"
    if malignancy_csv.is_file():
        by_series: dict[str, list[Nodule]] = {}
        for row in read_nodules(malignancy_csv, keep, skipped, malignancy=True):
            by_series.setdefault(row.series_uid, []).append(row)
        # the rows need not be those of annotations.csv: join each nodule to the row whose sphere holds its centre
        joined = [(n, nearest(list(n.center_xyz), by_series.get(n.series_uid, ()))) for n in nodules]
        nodules = [n._replace(malignant=getattr(row, "malignant", None)) for n, row in joined]
        baseline_mm = {n: row.diameter_mm for n, (_, row) in zip(nodules, joined) if row is not None}
    return nodules, excluded, baseline_mm


def _check_series(marks: list[Mark], series: tuple[str, ...], submission: Path) -> None:
    """Marks of series that are not scored: a warning with counts, or an error when no mark is on a scored scan."""
    known = set(series)
    unknown = [mk.series_uid for mk in marks if mk.series_uid not in known]
    if not unknown:
        return
    if len(unknown) == len(marks):
        raise CsvError(
            f"none of its {len(set(unknown))} series is among the {len(series)} scans scored (first: {unknown[0]})",
            path=submission,
            fix="Pass the data folder the submission was made for.",
        )
    warnings.warn(
        f"{submission}: {len(unknown)} mark(s) of {len(set(unknown))} series not among the scans scored were left out",
        stacklevel=3,
    )


def describe_malignancy(mal: MalignancyScore) -> str:
    """The model's malignancy ROC AUC beside the diameter-only baseline's and their difference, on one line.

    An AUC that needs a class the hit nodules lack is said in words, never printed as NaN.
    """
    if mal.malignant == 0 or mal.malignant == mal.nodules:  # the AUC (NaN) needs both classes
        missing = "positive (malignant)" if mal.malignant == 0 else "negative (benign)"
        return f"malignancy: no {missing} among the {mal.nodules} hit nodules, so no ROC AUC"
    level = f"{mal.confidence:.0%} " if not math.isnan(mal.auc_ci[0]) else ""
    line = (
        f"malignancy ROC AUC {mal.auc:.3f}{_brackets(mal.auc_ci, level)} over {mal.nodules} hit nodules "
        f"({mal.malignant} malignant)"
    )
    skipped = mal.nodules - mal.diameter_nodules
    over = f" over the {mal.diameter_nodules} with an annotated diameter ({skipped} without one skipped)"
    if mal.diameter_nodules == 0:
        return f"{line}; diameter alone: no hit nodule has an annotated diameter"
    if math.isnan(mal.diameter_auc):
        return f"{line}; diameter alone: one class only among the {mal.diameter_nodules} with an annotated diameter"
    return (
        f"{line}; diameter alone {mal.diameter_auc:.3f}{_brackets(mal.diameter_ci)}{over if skipped else ''}; "
        f"difference {mal.difference:+.3f}{_brackets(mal.difference_ci, signed=True)}"
    )


def _brackets(ci: tuple[float, float], level: str = "", *, signed: bool = False) -> str:
    """ " (95% 0.55-0.86)", or " (-0.15 to +0.18)" for a difference; empty without an interval."""
    if math.isnan(ci[0]):
        return ""
    return f" ({level}{ci[0]:+.2f} to {ci[1]:+.2f})" if signed else f" ({level}{ci[0]:.2f}-{ci[1]:.2f})"


def _interval(lo: float, hi: float) -> str:
    return "-" if math.isnan(lo) else f"{lo:.3f}-{hi:.3f}"


def _json_safe(value):
    """NaN and infinity -> null, so that froc.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
