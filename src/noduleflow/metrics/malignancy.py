"""Malignancy of the nodules a detector found, scored by ROC AUC beside a ruler: the annotated diameter alone.

A learned malignancy model is only worth its weights if it ranks malignant nodules above benign
ones better than their size does (the LUNA16 book's chapter 14 does well with the diameter alone), so
`malignancy_auc` scores both on the same hit nodules and bootstraps them together: each resample
draws the hit nodules with replacement (the count stays the same) and scores the model, the
diameter and their difference on it, so the difference gets its own interval. A resample holding
one class only has no AUC and is skipped. Intervals are indexed as the FROC's (`froc.percentile_bounds`).
The AUCs are `classification.roc_auc` (scikit-learn's; tied scores count one half); the resamples'
are `classification.roc_auc_weighted`, the same area for all resamples at once (one multiplicity per
nodule), since one scikit-learn call per resample makes the bootstrap the slowest part of `evaluate`
(docs/decisions.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from noduleflow.metrics.classification import roc_auc, roc_auc_weighted
from noduleflow.metrics.froc import Mark, Matching, percentile_bounds

_NAN_PAIR = (math.nan, math.nan)


class MalignancyScore(NamedTuple):
    """ROC AUC of mark malignancy against `mal_bool` over the hit nodules that have both, beside the diameter's.

    The diameter baseline and the difference (model minus diameter) are over the `diameter_nodules`
    of those with an annotated diameter (all of them in LUNA16). Intervals are NaN without bootstrap.
    """

    auc: float  # NaN unless both classes are present
    nodules: int
    malignant: int
    auc_ci: tuple[float, float] = _NAN_PAIR
    diameter_auc: float = math.nan
    diameter_ci: tuple[float, float] = _NAN_PAIR
    difference: float = math.nan  # model AUC minus diameter AUC, over the nodules with a diameter
    difference_ci: tuple[float, float] = _NAN_PAIR
    diameter_nodules: int = 0  # hit nodules with an annotated diameter: the baseline's set
    bootstrap: int = 0  # resamples drawn (those with one class only are skipped)
    confidence: float = 0.95


class MalignancyInputs(NamedTuple):
    """The hit nodules a malignancy AUC is over: which, the model's scores and the labels, each (K,)."""

    index: np.ndarray  # int64 index into matching.nodules
    scores: np.ndarray  # float64 malignancy of the nodule's best mark
    malignant: np.ndarray  # bool


def malignancy_inputs(matching: Matching, marks: Sequence[Mark]) -> MalignancyInputs:
    """The hit nodules with a known malignancy whose best mark carries one, with that mark's malignancy.

    `marks` are the ones `matching` was made from. Missed nodules are left out: a malignancy score
    is only meaningful for a nodule that was found.
    """
    rows = [
        (i, float(marks[k].malignancy), bool(nodule.malignant))
        for i, (nodule, k) in enumerate(zip(matching.nodules, matching.best_mark))
        if k >= 0 and nodule.malignant is not None and marks[k].malignancy is not None
    ]
    index, scores, malignant = zip(*rows) if rows else ((), (), ())
    return MalignancyInputs(
        np.array(index, dtype=np.int64), np.array(scores, dtype=np.float64), np.array(malignant, dtype=bool)
    )


def malignancy_auc(
    matching: Matching,
    marks: Sequence[Mark],
    *,
    diameters: Sequence[float] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MalignancyScore:
    """The model's and the diameter's malignancy ROC AUC over the hit nodules (`malignancy_inputs`).

    diameters: (N,) mm, the baseline's score for each of `matching.nodules` (default: their
    `diameter_mm`); a missing one (NaN, or not above 0) leaves that nodule out of the baseline and the
    difference. `bootstrap` resamples (0: none) seeded by `seed` give the `confidence` intervals.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    picked = malignancy_inputs(matching, marks)
    if diameters is None:
        diameters = [n.diameter_mm for n in matching.nodules]
    if len(diameters) != len(matching.nodules):
        raise ValueError(f"diameters has {len(diameters)} entries for {len(matching.nodules)} nodules")
    size = np.asarray(diameters, dtype=np.float64)[picked.index]  # (K,)
    sized = np.isfinite(size) & (size > 0)  # (K,)
    ruler = np.where(sized, size, 0.0)  # a missing diameter weighs 0 below, so its value never counts
    y = picked.malignant
    ruler_auc = roc_auc(size[sized], y[sized])
    difference = roc_auc(picked.scores[sized], y[sized]) - ruler_auc
    intervals = [_NAN_PAIR] * 3
    if bootstrap > 0 and picked.index.size:
        k = picked.index.size
        draws = np.random.default_rng(seed).integers(k, size=(bootstrap, k))
        weights = np.stack([np.bincount(row, minlength=k) for row in draws]).astype(np.float64)  # (B, K)
        model = roc_auc_weighted(picked.scores, y, weights)  # (B,), NaN where a resample holds one class
        on_sized = weights * sized
        samples = (model, roc_auc_weighted(ruler, y, on_sized))
        samples += (roc_auc_weighted(picked.scores, y, on_sized) - samples[1],)
        bounds = [percentile_bounds(column[np.isfinite(column)][:, None], confidence) for column in samples]
        intervals = [(float(lo[0]), float(hi[0])) for lo, hi in bounds]
    return MalignancyScore(
        auc=roc_auc(picked.scores, y),
        nodules=int(picked.index.size),
        malignant=int(y.sum()),
        auc_ci=intervals[0],
        diameter_auc=ruler_auc,
        diameter_ci=intervals[1],
        difference=difference,
        difference_ci=intervals[2],
        diameter_nodules=int(sized.sum()),
        bootstrap=bootstrap,
        confidence=confidence,
    )
