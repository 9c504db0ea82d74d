"""report.html: one self-contained page describing a trained run and, when given, its detections and evaluation.

Sections: data (scans, nodules, previews), training curves of each part, FROC with its interval and
the CPM, the top findings and the missed nodules on their CT slices, timings per stage, environment.
Images are inlined (data: URIs), there is no script and no network reference, so the file can be
mailed or opened offline. Every section renders when its input is absent, saying what is missing
and which command makes it; a section that fails on a damaged file says so instead of stopping
the report. Everything read from a file is HTML-escaped.

    noduleflow report RUN [--detections DIR] [--evaluation DIR] [--out FILE]

DETECTIONS is what `noduleflow detect` wrote (detections.json, png/); EVALUATION what `noduleflow
evaluate` wrote (froc.json). Without --evaluation, DETECTIONS/froc.json is used when present (the
default output folder of `evaluate` is the submission's); without either, RUN/detections and
RUN/evaluation are used when they exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from noduleflow.report.inputs import ReportError

log = logging.getLogger("noduleflow")

__all__ = ["ReportError", "build_html", "write_report"]


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    detections: str | Path | None = None,
    evaluation: str | Path | None = None,
    timings: Mapping[str, float] | str | Path | None = None,
) -> Path:
    """Write the report of `run_dir` to `out` (default RUN/report.html), atomically; returns its path.

    detections: folder written by `noduleflow detect`; evaluation: folder written by `noduleflow evaluate`;
    timings: {stage: seconds} (e.g. the demo's synthesize/train/detect/evaluate), or a JSON file of it;
    default RUN/timings.json, else the demo's OUT/timings.json two folders above RUN.
    A `ReportError` when `run_dir` is not a run or a folder given is not one.
    """
    from noduleflow.files import atomic_write, output_error, writable_dir

    run_dir = Path(run_dir)
    page = build_html(run_dir, detections=detections, evaluation=evaluation, timings=timings)
    path = Path(out) if out is not None else run_dir / "report.html"
    writable_dir(path.parent)  # an OutputError naming the folder when it cannot be made or written
    try:
        atomic_write(path, page)
    except OSError as err:
        raise output_error(err, path) from None
    log.info("report: wrote %s (%d kB)", path, len(page) // 1024)
    return path


def build_html(
    run_dir: str | Path,
    *,
    detections: str | Path | None = None,
    evaluation: str | Path | None = None,
    timings: Mapping[str, float] | str | Path | None = None,
) -> str:
    """The report's HTML text (what `write_report` writes)."""
    from noduleflow.report import html
    from noduleflow.report.curves import curves_section
    from noduleflow.report.data import data_section
    from noduleflow.report.inputs import check_folder, detection_scans, load_run, read_json
    from noduleflow.report.results import findings_section, froc_section, missed_section
    from noduleflow.report.system import environment_section, read_timings, timings_section

    run = load_run(run_dir)
    detections = check_folder(detections, "detections", "Pass the folder `noduleflow detect ... -o DIR` wrote.")
    evaluation = check_folder(evaluation, "evaluation", "Pass the folder `noduleflow evaluate ... -o DIR` wrote.")
    if detections is None and (run.dir / "detections" / "detections.json").is_file():
        detections = run.dir / "detections"
    if evaluation is None:
        near = [d for d in (detections, run.dir / "evaluation") if d is not None and (d / "froc.json").is_file()]
        evaluation = near[0] if near else None
    scans = detection_scans(detections)
    froc = read_json(evaluation / "froc.json") if evaluation is not None else {}
    stages = read_timings(timings, run)

    def guarded(name: str, build, *args) -> str:
        try:
            return build(*args)
        except Exception as err:  # noqa: BLE001 - one damaged input costs its section, never the whole report
            log.warning("report: the %s section failed: %s", name, err)  # one line: no traceback reaches a user
            log.debug("report: the %s section's traceback", name, exc_info=True)
            reason = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
            return html.note(f"This section could not be drawn: {reason}")

    results = [
        ("froc", "FROC and CPM", guarded("froc", froc_section, froc, evaluation)),
        ("findings", "Top findings", guarded("findings", findings_section, scans, detections)),
        ("missed", "Missed nodules", guarded("missed", missed_section, scans, detections)),
    ]
    if not run.detector and not scans and not froc:
        plain = html.note(
            f"{run.dir.name} is a single-part run: detections, FROC and missed nodules come from a detector run "
            "(`noduleflow train detector DATA --run NAME`)."
        )
        results = [(anchor, title, plain) for anchor, title, _ in results]
    sections = [
        ("data", "Data", guarded("data", data_section, run, scans, froc)),
        ("training", "Training curves", guarded("training", curves_section, run)),
        *results,
        ("timings", "Timings", guarded("timings", timings_section, run, stages, scans)),
        ("environment", "Environment", guarded("environment", environment_section)),
    ]
    kind = "detector (" + ", ".join(run.parts) + ")" if run.detector else "single-part run"
    return html.page(f"noduleflow report: {run.dir.name}", f"{run.dir} - {kind}", sections)
