"""The report's results: the FROC with its interval and CPM (froc.json of `noduleflow evaluate`), the top
findings and the missed nodules drawn on their CT slices.

Missed nodules are recomputed from the detections (DETECTIONS/detections.json) and the annotations
of the data folder each scan came from (its `source`), with the evaluation's own matching
(`metrics.froc.match_marks`), so they agree with the hits froc.json counts. Panels are drawn by
`detect.render.write_scan_png`; a scan that is no longer on disk falls back to the PNG `detect` wrote.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from noduleflow.report import html
from noduleflow.report.data import render_marks
from noduleflow.report.inputs import ReportError, data_root_of, inside

MAX_FINDINGS = 12
MAX_MISSED = 12
GALLERY_PX = 300
_RATES = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


def froc_section(evaluation: dict[str, Any], where: Path | None) -> str:
    """CPM (in <span id="cpm">), the seven sensitivities with their intervals, and the FROC curve with its band."""
    if not evaluation:
        hint = f"{where}/froc.json is missing or unreadable. " if where is not None else ""
        return html.note(
            f"{hint}No evaluation: run `noduleflow evaluate DATA DETECTIONS/submission.csv -o EVAL`, "
            "then `noduleflow report RUN --detections DETECTIONS --evaluation EVAL`."
        )
    cpm, ci = evaluation.get("cpm"), _pair(evaluation.get("cpm_ci"))
    level = evaluation.get("confidence")
    level = f"{level:.0%}" if isinstance(level, float) and 0 < level < 1 else "95%"
    body = (
        f'<p class="big">CPM <span id="cpm">{html.number(cpm)}</span> '
        f"({html.esc(level)} interval {html.number(ci[0])}-{html.number(ci[1])})</p>"
    )
    body += html.para(
        f"{evaluation.get('scans', '-')} scans, {evaluation.get('nodules', '-')} nodules: "
        f"{evaluation.get('hits', '-')} hit, {evaluation.get('false_positives', '-')} false positives "
        f"(bootstrap of {evaluation.get('bootstrap', '-')} resamplings of the scans)."
    )
    sens = evaluation.get("sensitivities") if isinstance(evaluation.get("sensitivities"), list) else []
    cis = evaluation.get("sensitivity_ci") if isinstance(evaluation.get("sensitivity_ci"), list) else []
    rows = [
        (rate, html.number(s), "{}-{}".format(*map(html.number, _pair(c))))
        for rate, s, c in zip(_RATES, sens, cis + [None] * (len(sens) - len(cis)))
    ]
    body += html.table(("FPs per scan", "sensitivity", f"{level} interval"), rows, numeric=(0, 1, 2))
    mal = evaluation.get("malignancy")
    if isinstance(mal, dict):
        body += html.para(_malignancy_text(mal, level))
    curve = evaluation.get("curve")
    png = _plot(curve, cpm, ci, level) if isinstance(curve, dict) else None
    body += html.image(png, "FROC curve", "FROC") if png else html.note("froc.json holds no curve to draw.")
    return body


def _malignancy_text(mal: dict[str, Any], level: str) -> str:
    """The model's malignancy AUC beside the diameter-only baseline's and their difference, as `evaluate` prints
    them; a froc.json written before the baseline existed shows the model's AUC alone."""
    nodules, malignant = mal.get("nodules", "-"), mal.get("malignant")
    if malignant in (0, nodules):  # the AUC needs both classes
        missing = "positive (malignant)" if malignant == 0 else "negative (benign)"
        return f"Malignancy: no {missing} among the {nodules} hit nodules, so no ROC AUC."
    ci = _pair(mal.get("auc_ci"))
    text = (
        f"Malignancy ROC AUC {html.number(mal.get('auc'))}{_span(ci, f'{level} interval ')} over {nodules} hit nodules"
    )
    text += f" ({malignant} malignant)" if isinstance(malignant, int) else ""
    if "diameter_auc" not in mal:
        return text + "."
    size_ci, diff_ci = _pair(mal.get("diameter_ci")), _pair(mal.get("difference_ci"))
    diff = mal.get("difference")
    diff = f"{diff:+.3f}" if isinstance(diff, float) and math.isfinite(diff) else "-"
    return (
        f"{text}; the annotated diameter alone {html.number(mal.get('diameter_auc'))}{_span(size_ci)} "
        f"on {mal.get('diameter_nodules', '-')} of them; difference {diff}{_span(diff_ci, signed=True)}."
    )


def _span(ci: tuple[float, float], prefix: str = "", *, signed: bool = False) -> str:
    """ " (95% interval 0.55-0.86)", or " (-0.15 to +0.18)" for a difference; empty without an interval."""
    if not all(math.isfinite(v) for v in ci):
        return ""
    return f" ({prefix}{ci[0]:+.2f} to {ci[1]:+.2f})" if signed else f" ({prefix}{ci[0]:.2f}-{ci[1]:.2f})"


def _pair(value: object) -> tuple[float, float]:
    if isinstance(value, list) and len(value) == 2:
        return tuple(v if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in value)
    return math.nan, math.nan


def _plot(curve: dict[str, Any], cpm: object, ci: tuple[float, float], level: str) -> bytes | None:
    """FROC on log-2 FPs per scan (1/8..8) with its bootstrap band; None when the curve's lists are unusable."""
    import numpy as np
    from matplotlib.figure import Figure

    try:
        fps, sens, lo, hi = (np.asarray(curve[k], dtype=np.float64) for k in ("fps", "sensitivity", "lower", "upper"))
    except (KeyError, TypeError, ValueError):
        return None
    if fps.ndim != 1 or not fps.size or not all(a.shape == fps.shape for a in (sens, lo, hi)) or (fps <= 0).any():
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        ax.fill_between(fps, lo, hi, color="tab:blue", alpha=0.2, lw=0, label=f"{level} bootstrap band")
    ax.plot(fps, sens, color="tab:blue", lw=2, label="FROC")
    ax.set_xscale("log", base=2)
    ax.set_xlim(0.125, 8)
    ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4, 8], _RATES)
    ax.set(ylim=(0, 1.02), xlabel="average false positives per scan", ylabel="sensitivity")
    ax.set_title(f"CPM {html.number(cpm)} ({level} interval {html.number(ci[0])}-{html.number(ci[1])})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return html.figure_png(fig)


def findings_section(scans: list[dict[str, Any]], detections: Path | None) -> str:
    """The MAX_FINDINGS most probable findings over all scans, each on its slice."""
    if detections is None:
        return html.note("No detections: run `noduleflow detect DATA --run RUN -o DIR` and pass `--detections DIR`.")
    ranked = sorted(
        (
            (f, s)
            for s in scans
            for f in s["findings"]
            if isinstance(f, dict) and _xyz(f) and _num(f.get("probability"))
        ),
        key=lambda fs: -fs[0]["probability"],
    )
    if not ranked:
        return html.note(f"{detections}/detections.json holds no findings (none above the detector's threshold).")
    top = ranked[:MAX_FINDINGS]
    captions = [
        f"#{rank + 1} p {f['probability']:.2f}"
        + ("" if _mal(f) is None else f", malignant {_mal(f):.2f}")
        + f", {_diameter(f):.1f} mm at ({', '.join(f'{v:.1f}' for v in _xyz(f))}) mm; {s['seriesuid']}"
        for rank, (f, s) in enumerate(top)
    ]
    marks = [(_xyz(f), _diameter(f), f["probability"], _mal(f)) for f, _ in top]
    figures = _ranked_panels([s for _, s in top], marks, captions, detections)
    text = f"The {len(top)} most probable of {len(ranked)} findings in {len(scans)} scans, circled at their size."
    return html.para(text) + html.grid(figures)


def missed_section(scans: list[dict[str, Any]], detections: Path | None) -> str:
    """The annotated nodules no finding hit (LUNA16 matching), each on its slice, largest first."""
    if detections is None:
        return html.note(
            "Missed nodules need the detections: pass `--detections DIR` (what `noduleflow detect` wrote)."
        )
    from noduleflow.data.luna16 import read_nodules
    from noduleflow.evaluate import read_detections
    from noduleflow.metrics.froc import match_marks

    roots: dict[Path, list[str]] = {}
    for scan in scans:
        root = data_root_of(scan.get("source"))
        if root is not None:
            roots.setdefault(root, []).append(scan["seriesuid"].strip())  # as read_detections strips it
    if not roots:
        return html.note(
            "No annotations found beside the scans detected on (ROOT/annotations.csv next to ROOT/subset*/): "
            "missed nodules need the scans' data folder."
        )
    marks = read_detections(detections / "detections.json")
    missed, total = [], 0
    for root, series in roots.items():
        keep = dict.fromkeys(series)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nodules = read_nodules(root / "annotations.csv", keep, {})
            excl = root / "annotations_excluded.csv"
            excluded = read_nodules(excl, keep, {}, excluded=True) if excl.is_file() else ()
        matching = match_marks(marks, nodules, series, excluded=excluded)
        total += len(matching.nodules)
        missed += [n for n, best in zip(matching.nodules, matching.best_mark) if best < 0]
    head = f'<p><span id="missed-count">{len(missed)}</span> of {total} annotated nodules were missed (no finding within their radius).</p>'
    if not missed:
        return head
    missed.sort(key=lambda n: -n.diameter_mm)
    shown = missed[:MAX_MISSED]
    source = {s["seriesuid"].strip(): s for s in scans}
    captions = [
        f"missed {n.diameter_mm:.1f} mm nodule at ({', '.join(f'{v:.1f}' for v in n.center_xyz)}) mm; {n.series_uid}"
        for n in shown
    ]
    marks = [(n.center_xyz, n.diameter_mm, 0.0, None) for n in shown]
    figures = _ranked_panels([source[n.series_uid] for n in shown], marks, captions, detections, fallback=False)
    more = f" (the {len(shown)} largest shown)" if len(missed) > len(shown) else ""
    return (
        head
        + html.para(f"Each drawn at its annotated centre and size; p 0.00: no finding there{more}.")
        + html.grid(figures)
    )


def _ranked_panels(
    scans: list[dict[str, Any]], marks: list[tuple], captions: list[str], detections: Path, *, fallback: bool = True
) -> list[str]:
    """One figure per mark, in the marks' order; each scan is read once for all of its marks."""
    slots: list[str | None] = [None] * len(marks)
    for scan_id in dict.fromkeys(id(s) for s in scans):
        rows = [k for k, s in enumerate(scans) if id(s) == scan_id]
        drawn = _panels(
            scans[rows[0]], detections, [marks[k] for k in rows], [captions[k] for k in rows], fallback=fallback
        )
        for k, figure in zip(rows, drawn):  # a fallback is one figure for the scan: at its first mark's place
            slots[k] = figure
    return [f for f in slots if f is not None]


def _panels(
    scan: dict[str, Any], detections: Path, marks: list[tuple], captions: list[str], *, fallback: bool = True
) -> list[str]:
    """One figure per mark drawn on the scan's CT (read from its `source`); else detect's PNG of the scan."""
    from noduleflow.ct import read_volume

    uid = scan["seriesuid"]
    try:
        source = scan.get("source")
        if not isinstance(source, str) or not source.strip():  # Path("") would be the current folder
            raise ReportError("detections.json names no source file for it")
        volume = read_volume(source)
    except Exception as err:  # noqa: BLE001 - a moved or damaged scan falls back to detect's own PNG
        reason = getattr(err, "message", type(err).__name__)
        pngs = [inside(detections, f) for f in scan.get("files", []) if isinstance(f, str) and f.endswith(".png")]
        png = next((p for p in pngs if p is not None), None)
        if fallback and png is not None:
            return [
                html.image(
                    png.read_bytes(), "findings", f"{uid}: the scan is not readable ({reason}); detect's PNG of it"
                )
            ]
        return [html.note(f"{uid}: the scan is not readable ({reason}); {len(marks)} mark(s) not drawn.")]
    return [
        html.image(render_marks(volume, uid, [mark], top=1), "finding on its slice", caption, max_side=GALLERY_PX)
        for mark, caption in zip(marks, captions)
    ]


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xyz(f: dict[str, Any]) -> tuple[float, float, float] | None:
    xyz = tuple(f.get(k) for k in ("coordX", "coordY", "coordZ"))
    return xyz if all(_num(v) for v in xyz) else None  # type: ignore[return-value]


def _diameter(f: dict[str, Any]) -> float:
    d = f.get("diameter_mm")
    return float(d) if _num(d) and 0 < d < 200 else 6.0  # drawn size only; 6 mm, a typical nodule, when unknown


def _mal(f: dict[str, Any]) -> float | None:
    m = f.get("malignancy")
    return float(m) if _num(m) else None
