"""classification_metrics and roc_auc against scikit-learn on random, tied and degenerate inputs."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from noduleflow.metrics.classification import classification_metrics, confusion_matrix, roc_auc


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
    auc = roc_auc_score(y, probs[:, 1]) if num_classes == 2 else roc_auc_score(y, probs, multi_class="ovr", average="macro")
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
