"""Per-epoch classification metrics from logits: accuracy, precision, recall, F1 and ROC AUC.

Two classes are scored as a binary problem with class 1 as the positive (nodule / malignant),
plus what a rare positive class needs: average precision (`ap`, the area under the
precision-recall curve, as scikit-learn's `average_precision_score`) and the best F1 over all
probability thresholds (`f1_best`) with the threshold that reaches it (`threshold`). A classifier
trained on balanced batches (one nodule per negative) judges P(nodule) as if half the candidates
were nodules; at LUNA16's 1:80 its F1 at 0.5 says more about that prior than about the ranking,
so the operating threshold is chosen on validation data.
more classes are macro-averaged one-vs-rest, as scikit-learn's `average="macro"` and
`multi_class="ovr"` do. Undefined ratios (no predicted or no true positives) count as 0, as
in scikit-learn with `zero_division=0`; an AUC without both classes present is NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) predicted and true class indices -> (C, C) int64 counts, rows true, columns predicted."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (N,) for boolean targets `positive` (N,).

    Computed as the Mann-Whitney U statistic over average ranks, so tied scores count one half,
    exactly like the trapezoidal ROC area; O(N log N), no threshold sweep.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # 1-based, ties averaged
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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

    Thresholds sweep the distinct scores from the highest down (a sample counts as positive when its
    score >= threshold); tied scores enter together, as in scikit-learn's precision_recall_curve.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return {"ap": math.nan, "f1_best": math.nan, "threshold": math.nan}
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, hit = np.asarray(scores, dtype=np.float64)[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of tied scores
    tp = np.cumsum(hit)[ends]
    called = ends + 1
    precision, recall = tp / called, tp / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    f1 = np.where(tp > 0, 2 * tp / (called + n_pos), 0.0)  # = 2PR / (P + R)
    best = int(np.argmax(f1))
    return {"ap": ap, "f1_best": float(f1[best]), "threshold": float(s[ends[best]])}
