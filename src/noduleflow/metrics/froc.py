"""The LUNA16 FROC and its CPM, scored by the rules of the challenge's `noduleCADEvaluationLUNA16.py`.

The reference is the evaluation kit's script (evaluationScript.zip on luna16.grand-challenge.org;
read in the copies that public repositories keep, e.g. fionaxzhou/cancer, and in DIAG's "LUNA16 CPM
calculator"). Its rules, reproduced here in numpy:

* At most `MAX_MARKS` (100) marks per scan. A scan with more keeps the marks whose probability is
  strictly above its 101st highest; marks tied with the 101st are dropped too (so it may keep fewer
  than 100). The script does this silently; `Matching.n_dropped` counts them.
* A mark hits a finding when its squared distance to the finding's centre is < (diameter / 2)^2, in
  mm (`data.hit_rule.hits`, the one definition). There is no minimum radius; only a negative
  diameter (-1: size unknown, in annotations_excluded.csv) is read as 10 mm.
* A nodule hit by several marks counts once, with the highest probability among them; the other
  marks are neither TP nor FP. A mark inside two overlapping nodules counts for both.
* Marks that hit an excluded finding (annotations_excluded.csv) and no nodule are ignored.
* Every other mark is a false positive. Scans without marks still count in FPs per scan, and their
  nodules are misses.
* The curve has one point per distinct probability (ties are one step, as in scikit-learn's
  `roc_curve`, which the script calls) plus the origin: FPs per scan = FPs at or above the threshold
  / scans; sensitivity = hits at or above / all nodules, the missed ones included.
* The sensitivity at a rate is `np.interp` of that curve, as the script's plotted curve and its
  bootstrap take it: beyond the last false positive it is the final sensitivity; at a rate a
  vertical step stands on, the top of the step. CPM = mean sensitivity at `FP_RATES`.
* Bootstrap: resample the scans with replacement (the scan count stays the same), recompute the
  curve, and take the sorted samples at floor(0.025 B) and floor(0.975 B), as `compute_mean_ci` does.

Where the script divides 0 by 0 (no nodule hit at all) it yields NaN; here the sensitivity is 0.
The leaderboard calculator (DIAG's `getCPM`) instead takes the raw curve point nearest each rate,
which scores a system with no false positives 0; the interpolation is the script's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from noduleflow.data import hit_rule
from noduleflow.data.luna16 import Nodule

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # FPs per scan where the CPM is read
MAX_MARKS = 100  # marks per scan, the LUNA16 limit
BAND_FPS = np.geomspace(0.125, 8.0, 97)  # (97,) log grid of the bootstrap band, steps of 2^(1/16)
_BLOCK = 2048  # curve entries summed at once: a bootstrap chunk holds 250 x 2048 float32 (2 MB)


class Mark(NamedTuple):
    """One CAD mark: centre in world mm (X, Y, Z), a nodule score (higher = surer; any real number,
    only its order matters), and optionally the probability that the nodule is malignant."""

    series_uid: str
    center_xyz: tuple[float, float, float]
    probability: float
    malignancy: float | None = None


@dataclass(frozen=True)
class Matching:
    """Marks matched to the findings of each scan: the script's FROC lists, as arrays.

    Entries (E,) are one per hit nodule (its best mark's probability) and one per false-positive
    mark; missed nodules count only in `nodules_per_scan`.
    """

    series_uids: tuple[str, ...]
    nodules: tuple[Nodule, ...]  # (N,) included nodules of these scans, in input order
    best_mark: np.ndarray  # (N,) index into the marks of each nodule's best hit; -1 for a miss
    probability: np.ndarray  # (E,) float64
    is_hit: np.ndarray  # (E,) bool
    scan: np.ndarray  # (E,) int64 index into series_uids
    nodules_per_scan: np.ndarray  # (S,) int64
    n_marks: int  # marks scored: on listed scans, within the per-scan limit
    n_ignored: int  # marks on excluded findings only
    n_double: int  # extra marks on a nodule already hit
    n_dropped: int  # marks over the per-scan limit
    n_unlisted: int  # marks of series that are not in series_uids (not scored)
    max_marks: int = MAX_MARKS  # the per-scan limit applied (<= 0: none)

    @property
    def n_hits(self) -> int:
        return int(self.is_hit.sum())

    @property
    def n_false_positives(self) -> int:
        return int((~self.is_hit).sum())


@dataclass(frozen=True)
class FrocResult:
    """The FROC of one submission: CPM, the seven sensitivities, bootstrap intervals and the curve."""

    cpm: float
    sensitivities: tuple[float, ...]  # (7,) at FP_RATES
    cpm_ci: tuple[float, float]  # bootstrap interval; NaN without bootstrap
    sensitivity_ci: tuple[tuple[float, float], ...]  # (7,) intervals at FP_RATES
    fps: np.ndarray  # (G+1,) curve: average false positives per scan, from 0
    sensitivity: np.ndarray  # (G+1,) curve: fraction of nodules hit
    thresholds: np.ndarray  # (G+1,) probability of each point; +inf at the origin
    band_lower: np.ndarray  # (97,) bootstrap band at BAND_FPS; the curve itself without bootstrap
    band_upper: np.ndarray  # (97,)
    matching: Matching
    bootstrap: int
    confidence: float

    @property
    def n_scans(self) -> int:
        return len(self.matching.series_uids)

    @property
    def n_nodules(self) -> int:
        return len(self.matching.nodules)

    def to_dict(self) -> dict:
        """JSON-ready: scores, counts, and the curve and band sampled on `BAND_FPS`."""
        m = self.matching
        return {
            "cpm": self.cpm,
            "cpm_ci": list(self.cpm_ci),
            "confidence": self.confidence,
            "bootstrap": self.bootstrap,
            "fp_rates": list(FP_RATES),
            "sensitivities": list(self.sensitivities),
            "sensitivity_ci": [list(ci) for ci in self.sensitivity_ci],
            "scans": self.n_scans,
            "nodules": self.n_nodules,
            "hits": m.n_hits,
            "false_positives": m.n_false_positives,
            "marks": m.n_marks,
            "ignored_on_excluded": m.n_ignored,
            "double_hits": m.n_double,
            "dropped_over_limit": m.n_dropped,
            "unlisted_marks": m.n_unlisted,
            "curve": {
                "fps": BAND_FPS.tolist(),
                "sensitivity": np.interp(BAND_FPS, self.fps, self.sensitivity).tolist(),
                "lower": self.band_lower.tolist(),
                "upper": self.band_upper.tolist(),
            },
        }


def match_marks(
    marks: Sequence[Mark],
    nodules: Sequence[Nodule],
    series_uids: Sequence[str],
    *,
    excluded: Sequence[Nodule] = (),
    max_marks: int = MAX_MARKS,
) -> Matching:
    """Match the marks of each listed scan to its nodules and excluded findings (rules above).

    Nodules, findings and marks of series not in `series_uids` are left out (marks are counted in
    `n_unlisted`). `max_marks` <= 0 lifts the per-scan limit.
    """
    series = tuple(dict.fromkeys(series_uids))
    index = {uid: i for i, uid in enumerate(series)}
    nodules = tuple(n for n in nodules if n.series_uid in index)
    m_scan, m_xyz = _locate(marks, index)
    prob = np.array([m.probability for m in marks], dtype=np.float64)
    n_scan, n_xyz = _locate(nodules, index)
    n_diam = np.array([n.diameter_mm for n in nodules], dtype=np.float64)
    x_kept = [n for n in excluded if n.series_uid in index]
    x_scan, x_xyz = _locate(x_kept, index)
    x_diam = np.array([n.diameter_mm for n in x_kept], dtype=np.float64)

    best = np.full(len(nodules), -1, dtype=np.int64)
    hit_rows, fp_rows = [], []
    n_marks = n_ignored = n_double = n_dropped = 0
    m_groups, n_groups, x_groups = (_groups(s, len(series)) for s in (m_scan, n_scan, x_scan))
    for s in range(len(series)):
        mine = m_groups[s]
        if max_marks > 0 and mine.size > max_marks:
            cut = np.sort(prob[mine])[::-1][max_marks]
            n_dropped += int((prob[mine] <= cut).sum())
            mine = mine[prob[mine] > cut]
        n_marks += mine.size
        hit = hit_rule.hits(n_xyz[n_groups[s]], n_diam[n_groups[s]], m_xyz[mine])  # (N_s, M_s)
        on_excluded = hit_rule.hits(x_xyz[x_groups[s]], x_diam[x_groups[s]], m_xyz[mine]).any(axis=0)  # (M_s,)
        used = hit.any(axis=0)
        found = hit.any(axis=1)
        top = (
            np.where(hit, prob[mine][None, :], -np.inf).argmax(axis=1)
            if mine.size
            else np.zeros(hit.shape[0], np.int64)
        )
        best[n_groups[s][found]] = mine[top[found]]
        n_double += int(np.clip(hit.sum(axis=1) - 1, 0, None).sum())
        n_ignored += int((on_excluded & ~used).sum())
        hit_rows.append(best[n_groups[s][found]])
        fp_rows.append(mine[~used & ~on_excluded])

    hits, fps = np.concatenate([np.zeros(0, np.int64), *hit_rows]), np.concatenate([np.zeros(0, np.int64), *fp_rows])
    return Matching(
        series_uids=series,
        nodules=nodules,
        best_mark=best,
        probability=np.concatenate([prob[hits], prob[fps]]),
        is_hit=np.r_[np.ones(hits.size, bool), np.zeros(fps.size, bool)],
        scan=np.concatenate([m_scan[hits], m_scan[fps]]),
        nodules_per_scan=np.bincount(n_scan, minlength=len(series)).astype(np.int64),
        n_marks=n_marks,
        n_ignored=n_ignored,
        n_double=n_double,
        n_dropped=n_dropped,
        n_unlisted=int((m_scan < 0).sum()),
        max_marks=max_marks,
    )


def froc(
    marks: Sequence[Mark],
    nodules: Sequence[Nodule],
    series_uids: Sequence[str],
    *,
    excluded: Sequence[Nodule] = (),
    max_marks: int = MAX_MARKS,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> FrocResult:
    """Score `marks` on the listed scans: CPM, sensitivities at `FP_RATES`, curve and bootstrap.

    `bootstrap` resamplings of the scans (0 skips them) give the `confidence` intervals; they are
    vectorised (one weighted cumulative sum per resampling), about a second for 1,000 resamplings
    of 100 scans with 100 marks each. With no nodule on the listed scans every sensitivity is NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    m = match_marks(marks, nodules, series_uids, excluded=excluded, max_marks=max_marks)
    n_scans = len(m.series_uids)
    order = np.argsort(-m.probability, kind="stable")
    m_sorted = (m.probability[order], m.is_hit[order], m.scan[order])
    fps, sens = _curves(*m_sorted, m.nodules_per_scan, np.ones((1, n_scans)))
    at = np.interp(FP_RATES, fps[0], sens[0])
    thresholds = np.r_[np.inf, m_sorted[0][_step_ends(m_sorted[0])]]

    if bootstrap > 0 and n_scans > 0:
        draws = np.random.default_rng(seed).integers(n_scans, size=(bootstrap, n_scans))
        weights = np.stack([np.bincount(row, minlength=n_scans) for row in draws]).astype(np.float64)  # (B, S)
        samples = _resampled(m_sorted, m.nodules_per_scan, weights, np.r_[FP_RATES, BAND_FPS])  # (B, 7 + 97)
        samples = samples[np.isfinite(samples).all(axis=1)]  # resamplings without any nodule say nothing
        cpms = samples[:, : len(FP_RATES)].mean(axis=1)
        lo, hi = percentile_bounds(np.column_stack([cpms, samples]), confidence)
        cpm_ci, ci, band = (lo[0], hi[0]), list(zip(lo[1:8], hi[1:8])), (lo[8:], hi[8:])
    else:
        curve = np.interp(BAND_FPS, fps[0], sens[0])
        cpm_ci, ci, band = (math.nan, math.nan), [(math.nan, math.nan)] * len(FP_RATES), (curve, curve)
    return FrocResult(
        cpm=float(at.mean()),
        sensitivities=tuple(float(v) for v in at),
        cpm_ci=(float(cpm_ci[0]), float(cpm_ci[1])),
        sensitivity_ci=tuple((float(a), float(b)) for a, b in ci),
        fps=fps[0],
        sensitivity=sens[0],
        thresholds=thresholds,
        band_lower=np.asarray(band[0]),
        band_upper=np.asarray(band[1]),
        matching=m,
        bootstrap=bootstrap,
        confidence=confidence,
    )


def _locate(items: Sequence, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Marks or findings -> scan index (-1 when unlisted) (K,), centres in mm (K, 3)."""
    scan = np.array([index.get(item.series_uid, -1) for item in items], dtype=np.int64)
    xyz = np.array([item.center_xyz for item in items], dtype=np.float64).reshape(-1, 3)
    return scan, xyz


def _groups(scan: np.ndarray, n_scans: int) -> list[np.ndarray]:
    """Indices of the items of each scan, in input order (the order the script breaks ties in)."""
    order = np.argsort(scan, kind="stable")
    bounds = np.searchsorted(scan[order], np.arange(n_scans + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(n_scans)]


def _step_ends(prob_desc: np.ndarray) -> np.ndarray:
    """Index of the last entry of each run of equal probabilities (one curve point per threshold)."""
    return (
        np.r_[np.flatnonzero(prob_desc[1:] != prob_desc[:-1]), prob_desc.size - 1]
        if prob_desc.size
        else np.zeros(0, np.int64)
    )


def _curves(
    prob: np.ndarray,
    is_hit: np.ndarray,
    scan: np.ndarray,
    nodules_per_scan: np.ndarray,
    weights: np.ndarray,
    stop_fps: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FROC curves of entries sorted by falling probability, for scan multiplicities `weights` (B, S).

    Returns fps and sensitivity, each (B, G+1). Row b scores the data set holding scan s weights[b, s]
    times; the scan count stays S, as in the script's bootstrap. The script's arithmetic order
    (`fpr * FPs / scans`, `tpr * hits / nodules`) is kept so that a rate equal to a curve point
    lands on the same side of a vertical step. With `stop_fps`, the entries are summed in column
    blocks and the curves end once every row has a point beyond `stop_fps` FPs per scan: no rate up
    to it reads further, and a submission reaches 8 FPs per scan within its first tenth of marks.
    """
    n_rows, n_scans = weights.shape
    lesions = weights @ nodules_per_scan  # (B,)
    tp_all = weights @ np.bincount(scan[is_hit], minlength=n_scans)  # (B,)
    fp_all = weights @ np.bincount(scan[~is_hit], minlength=n_scans)
    ends = _step_ends(prob)
    limit = math.inf if stop_fps is None else math.floor(stop_fps * n_scans) + 1  # FP count past stop_fps
    tp_parts, fp_parts = [np.zeros((n_rows, 1))], [np.zeros((n_rows, 1))]
    tp_run, fp_run = np.zeros((n_rows, 1), np.float32), np.zeros((n_rows, 1), np.float32)
    for start in range(0, prob.size, _BLOCK):
        stop = min(start + _BLOCK, prob.size)
        # float32 sums of whole counts are exact below 2^24 and halve the memory traffic
        w = weights[:, scan[start:stop]].astype(np.float32)  # (B, _BLOCK)
        every = np.cumsum(w, axis=1) + (tp_run + fp_run)
        w *= is_hit[start:stop]
        tp = np.cumsum(w, axis=1) + tp_run
        fp = every - tp
        tp_run, fp_run = tp[:, -1:], fp[:, -1:]
        cols = ends[(ends >= start) & (ends < stop)] - start
        tp_parts.append(tp[:, cols].astype(np.float64))
        fp_parts.append(fp[:, cols].astype(np.float64))
        if (fp_parts[-1][:, -1:] >= limit).all() if cols.size else False:
            break
    tp, fp = np.hstack(tp_parts), np.hstack(fp_parts)  # (B, G'+1), from the origin
    fps, sens = np.zeros_like(fp), np.zeros_like(tp)
    some = fp_all > 0  # the script's "no false positives" case keeps FPs per scan at 0
    fps[some] = fp[some] / fp_all[some, None] * fp_all[some, None] / n_scans
    some = tp_all > 0  # no hit at all: the script's 0/0, here sensitivity 0
    sens[some] = tp[some] / tp_all[some, None] * tp_all[some, None] / lesions[some, None]
    sens[lesions == 0] = np.nan
    return fps, sens


def _resampled(m_sorted, nodules_per_scan: np.ndarray, weights: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Sensitivity at `rates` (Q,) of each resampling in `weights` (B, S) -> (B, Q), 250 rows at a time."""
    out = []
    for start in range(0, weights.shape[0], 250):
        fps, sens = _curves(*m_sorted, nodules_per_scan, weights[start : start + 250], stop_fps=float(rates.max()))
        out.extend(np.interp(rates, x, y) for x, y in zip(fps, sens))
    return np.array(out).reshape(len(out), rates.size)


def percentile_bounds(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) samples -> lower and upper (K,) bounds, indexed as the script's `compute_mean_ci`; NaN without samples.

    Shared by every bootstrap interval of the evaluation (the FROC's, the malignancy AUCs'), so they read alike.
    """
    if samples.shape[0] == 0:
        nan = np.full(samples.shape[1], np.nan)
        return nan, nan
    ordered = np.sort(samples, axis=0)
    tail = (1.0 - confidence) / 2.0
    n = ordered.shape[0]
    return ordered[int(math.floor(tail * n))], ordered[min(int(math.floor((1.0 - tail) * n)), n - 1)]
