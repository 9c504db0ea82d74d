"""Per-epoch classification metrics from logits: accuracy, precision, recall, F1 and ROC AUC.

Two classes are scored as a binary problem with class 1 as the positive (nodule / malignant),
plus what a rare positive class needs: average precision (`ap`, the area under the
precision-recall curve) and the best F1 over all probability thresholds (`f1_best`) with the
threshold that reaches it (`threshold`). A classifier trained on balanced batches (one nodule per
negative) judges P(nodule) as if half the candidates were nodules; at LUNA16's 1:80 its F1 at 0.5
says more about that prior than about the ranking, so the operating threshold is chosen on validation data.
More classes are macro-averaged one-vs-rest, as scikit-learn's `average="macro"` and
`multi_class="ovr"` do. Undefined ratios (no predicted or no true positives) count as 0, as
in scikit-learn with `zero_division=0`; an AUC without both classes present, and AP / best F1
without a positive, are NaN (kept as numbers for metrics.jsonl and TensorBoard; `describe_metrics`
turns them into words for people). ROC AUC, AP and the precision-recall curve are scikit-learn's,
so they mean exactly what its documentation says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

NO_POSITIVE = "no positive in validation"
"""What `describe_metrics` prints instead of the metrics a split without positives leaves undefined."""
_NEEDS_POSITIVE = ("precision", "recall", "f1", "auc", "ap", "f1_best", "threshold")
"""Metrics that say nothing without a positive (class 1): undefined (NaN) or 0 by convention only."""


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) predicted and true class indices -> (C, C) int64 counts, rows true, columns predicted."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (N,) for boolean targets `positive` (N,); NaN without both classes.

    scikit-learn's `roc_auc_score`: tied scores count one half (the trapezoidal ROC area).
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():  # also N = 0
        return math.nan
    return float(roc_auc_score(positive, np.asarray(scores, dtype=np.float64)))


def roc_auc_weighted(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`roc_auc` of `scores` (K,) for `positive` (K,) under each row of sample weights `weights` (B, K) -> (B,).

    Row b is scikit-learn's `roc_auc_score(positive, scores, sample_weight=weights[b])`; with whole-number
    weights (a bootstrap's multiplicities) that is the AUC of the data set holding sample k weights[b, k]
    times. Computed at once as the weighted Mann-Whitney statistic (ties count one half, the trapezoid's
    area), so a bootstrap is one matrix product rather than a scikit-learn call per resample, whose
    overhead dominates on a few dozen nodules. NaN for a row without weight on both classes.
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))  # (B, K)
    _, level = np.unique(scores, return_inverse=True)  # (K,) rank of each score among the distinct ones
    onehot = np.zeros((scores.size, int(level.max(initial=-1)) + 1))  # (K, U)
    onehot[np.arange(scores.size), level] = 1.0
    pos, neg = (weights * positive) @ onehot, (weights * ~positive) @ onehot  # (B, U) weight at each score
    below = np.cumsum(neg, axis=1) - neg  # negatives' weight strictly below each score
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    return np.where(both, pairs / np.where(both, n_pos * n_neg, 1.0), np.nan)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, *, threshold: float | None = None
) -> dict[str, float]:
    """(N, C) logits and (N,) int labels -> {accuracy, precision, recall, f1, auc} as floats in [0, 1].

    Two classes add {ap, f1_best, threshold} (see `threshold_metrics`); with `threshold` (e.g. the one
    chosen on validation, applied to the test split) also precision, recall and F1 of P(class 1) >= threshold
    as `precision_at_val_threshold`, `recall_at_val_threshold` and `f1_at_val_threshold`.
    """
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    num_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1).numpy()  # (N, C)
    cm = confusion_matrix(logits.argmax(dim=1), labels, num_classes).double()
    true_pos, predicted, actual = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), 0.0)  # (C,)
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    target = labels.numpy()
    if num_classes == 2:
        pick = slice(1, 2)
        auc = roc_auc(probs[:, 1], target == 1)
    else:
        pick = slice(None)
        auc = float(np.mean([roc_auc(probs[:, c], target == c) for c in range(num_classes)]))
    metrics = {
        "accuracy": float(true_pos.sum() / max(len(labels), 1)),
        "precision": float(precision[pick].mean()),
        "recall": float(recall[pick].mean()),
        "f1": float(f1[pick].mean()),
        "auc": auc,
    }
    if num_classes == 2:
        metrics.update(threshold_metrics(probs[:, 1], target == 1))
        if threshold is not None:
            called, positive = probs[:, 1] >= threshold, target == 1
            tp = int((called & positive).sum())
            p, r = tp / max(int(called.sum()), 1), tp / max(int(positive.sum()), 1)
            metrics.update(
                {
                    "precision_at_val_threshold": p,
                    "recall_at_val_threshold": r,
                    "f1_at_val_threshold": 2 * p * r / (p + r) if p + r > 0 else 0.0,
                }
            )
    return metrics


def threshold_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """{ap, f1_best, threshold} of `scores` (N,) for boolean targets `positive` (N,); NaN without positives.

    scikit-learn's `average_precision_score` and `precision_recall_curve`: thresholds are the distinct
    scores (a sample counts as positive when its score >= threshold), tied scores enter together. Among
    thresholds of equal best F1 the highest is kept: the fewest calls for the same F1.
    """
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return {"ap": math.nan, "f1_best": math.nan, "threshold": math.nan}
    scores = np.asarray(scores, dtype=np.float64)
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0, precision 1) has no threshold
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])  # thresholds ascend: the last is the highest
    return {
        "ap": float(average_precision_score(positive, scores)),
        "f1_best": float(f1[best]),
        "threshold": float(thresholds[best]),
    }


def describe_metrics(values: Mapping[str, float], *, prefix: str = "", where: str = "validation") -> str:
    """`values` as "name 0.1234" pairs for a terminal, with undefined metrics said in words, never `nan`.

    prefix: only keys starting with it are shown, without it (e.g. "val_" for a trainer's epoch record).
    A split without positives (AP undefined, or no AP and an undefined AUC: binary and multi-class
    alike) shows its loss and accuracy and then NO_POSITIVE (with `where`) instead of precision,
    recall, F1, AUC and AP, whose values there are NaN or a meaningless 0. Other NaNs print as "n/a".
    """
    shown = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
    undefined = _nan(shown.get("ap")) or ("ap" not in shown and _nan(shown.get("auc")))
    parts = []
    for name, value in shown.items():
        if undefined and (name in _NEEDS_POSITIVE or name.endswith("_at_val_threshold")):
            continue
        parts.append(f"{name} {'n/a' if _nan(value) else f'{value:.4f}'}")
    if undefined:
        parts.append(NO_POSITIVE.replace("validation", where))
    return "  ".join(parts)


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
