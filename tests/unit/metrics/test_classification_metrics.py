"""classification_metrics, roc_auc and threshold_metrics against scikit-learn on random, tied and degenerate inputs."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from noduleflow.metrics.classification import classification_metrics, confusion_matrix, roc_auc, threshold_metrics


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn(num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (300,), generator=gen)
    logits = torch.randn(300, num_classes, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, num_classes)
    got = classification_metrics(logits, labels)
    y, pred, probs = labels.numpy(), logits.argmax(1).numpy(), torch.softmax(logits, 1).numpy()
    average = "binary" if num_classes == 2 else "macro"
    p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
    auc = (
        roc_auc_score(y, probs[:, 1])
        if num_classes == 2
        else roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
    assert got["auc"] == pytest.approx(auc, abs=1e-9)


def test_auc_counts_ties_as_half_like_sklearn():
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.5])
    positive = np.array([0, 1, 0, 1, 1, 0, 0], dtype=bool)
    assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))


def test_auc_without_both_classes_is_nan():
    assert math.isnan(roc_auc(np.array([0.2, 0.3]), np.array([True, True])))


def test_no_predicted_positive_counts_as_zero_precision():
    logits = torch.tensor([[2.0, 0.0], [3.0, 0.0], [1.0, 0.0]])  # always predicts class 0
    got = classification_metrics(logits, torch.tensor([1, 0, 1]))
    assert got["precision"] == 0.0 and got["recall"] == 0.0 and got["f1"] == 0.0
    assert got["accuracy"] == pytest.approx(1 / 3)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_and_best_f1_match_sklearn_with_ties_and_rare_positives(seed):
    rng = np.random.default_rng(seed)
    positive = rng.random(800) < 0.03  # ~1:30, like nodule candidates
    scores = np.round(rng.random(800) * 0.7 + 0.4 * positive, 2)  # rounded: many ties
    got = threshold_metrics(scores, positive)
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    assert got["ap"] == pytest.approx(average_precision_score(positive, scores), abs=1e-12)
    assert got["f1_best"] == pytest.approx(f1[best], abs=1e-12)
    assert got["threshold"] == thresholds[best]


def test_best_f1_of_a_perfect_ranking_is_one_at_the_lowest_positive_score():
    got = threshold_metrics(np.array([0.9, 0.2, 0.7, 0.1, 0.4]), np.array([1, 0, 1, 0, 0], dtype=bool))
    assert (got["ap"], got["f1_best"], got["threshold"]) == (1.0, 1.0, 0.7)


def test_binary_metrics_include_the_threshold_metrics_and_none_without_positives():
    got = classification_metrics(torch.tensor([[0.0, 3.0], [0.0, -3.0], [0.0, 1.0]]), torch.tensor([1, 0, 0]))
    assert got["ap"] == 1.0 and got["f1_best"] == 1.0 and got["f1"] == pytest.approx(2 / 3)
    assert math.isnan(threshold_metrics(np.array([0.3, 0.4]), np.array([False, False]))["ap"])
    assert "ap" not in classification_metrics(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))


def test_a_given_threshold_scores_the_calls_at_or_above_it():
    probs = torch.tensor([0.95, 0.8, 0.6, 0.3, 0.2, 0.1])
    logits = torch.stack([torch.zeros(6), torch.logit(probs)], 1)  # softmax gives back `probs`
    got = classification_metrics(logits, torch.tensor([1, 0, 1, 1, 0, 0]), threshold=0.6)
    assert got["precision_at_val_threshold"] == pytest.approx(2 / 3)  # 0.95, 0.8, 0.6 called; 2 right
    assert got["recall_at_val_threshold"] == pytest.approx(2 / 3)
    assert got["f1_at_val_threshold"] == pytest.approx(2 / 3)
