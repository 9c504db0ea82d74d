"""Hand-made cases with known metrics (computed by scikit-learn underneath), and the words that replace
undefined metrics: a split without positives prints "no positive in validation", never `nan`."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from noduleflow.metrics.classification import (
    NO_POSITIVE,
    classification_metrics,
    describe_metrics,
    roc_auc,
    threshold_metrics,
)
from noduleflow.train.runlog import EpochProgress


def test_known_auc_ap_and_best_f1_of_a_hand_made_ranking():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    assert roc_auc(scores, positive) == pytest.approx(7 / 9)  # 7 of the 9 positive-negative pairs ranked right
    got = threshold_metrics(scores, positive)
    assert got["ap"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # precision at each positive, averaged
    assert got["f1_best"] == pytest.approx(6 / 7) and got["threshold"] == 0.6  # 3 of 3 found with 4 calls


def test_equal_best_f1_keeps_the_highest_threshold():
    # 0.9 calls one (F1 2/3); 0.4 calls all four, finding both (F1 2/3 again): the fewer calls win
    got = threshold_metrics(np.array([0.9, 0.6, 0.5, 0.4]), np.array([1, 0, 0, 1], dtype=bool))
    assert (got["f1_best"], got["threshold"], got["ap"]) == (pytest.approx(2 / 3), 0.9, pytest.approx(0.75))


def test_tied_scores_enter_together():
    got = threshold_metrics(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], dtype=bool))
    assert got["threshold"] == 0.5 and got["f1_best"] == pytest.approx(4 / 5)
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def test_a_validation_split_without_positives_says_so_instead_of_nan():
    got = classification_metrics(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    assert math.isnan(got["auc"]) and math.isnan(got["ap"]) and got["recall"] == 0.0
    text = describe_metrics({"val_loss": 0.25, **{f"val_{k}": v for k, v in got.items()}}, prefix="val_")
    assert text == f"loss 0.2500  accuracy 0.6667  {NO_POSITIVE}"
    assert NO_POSITIVE == "no positive in validation"
    assert describe_metrics(got, where="the test split").endswith("no positive in the test split")


def test_defined_metrics_print_as_numbers_and_a_lone_undefined_one_as_n_a():
    got = classification_metrics(torch.tensor([[0.0, 2.0], [0.0, 1.0]]), torch.tensor([1, 1]))  # no negative
    text = describe_metrics(got)
    assert "nan" not in text and "auc n/a" in text and "ap 1.0000" in text and "recall 1.0000" in text


def test_multi_class_metrics_without_a_class_say_so():
    got = classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))  # class 2 never present
    assert describe_metrics(got).endswith(NO_POSITIVE) and "nan" not in describe_metrics(got)


def test_the_epoch_line_says_no_positive_in_validation(capsys):
    record = {"epoch": 3, "train_loss": 0.5, "samples_per_s": 12.0, "val_loss": 0.4, "val_accuracy": 1.0}
    record |= {"val_precision": 0.0, "val_recall": 0.0, "val_f1": 0.0, "val_auc": math.nan, "val_ap": math.nan}
    record |= {"val_f1_best": math.nan, "val_threshold": math.nan}
    EpochProgress(True).report(record, improved=False)
    line = " ".join(capsys.readouterr().out.split())
    assert line == "epoch 3: train loss 0.5000, 12 samples/s | val loss 0.4000 accuracy 1.0000 " + NO_POSITIVE


def test_the_progress_bar_shows_no_nan_before_the_first_loss(capsys):
    bar = EpochProgress(True)
    bar.start(1, 2, batches=2)
    bar.stop()
    assert "nan" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("malignant", "words"),
    [
        (0, "malignancy: no positive (malignant) among the 4 hit nodules, so no ROC AUC"),
        (4, "malignancy: no negative (benign) among the 4 hit nodules, so no ROC AUC"),
        (
            1,
            "malignancy ROC AUC 0.667 over 4 hit nodules (1 malignant); diameter alone 0.333; difference +0.333",
        ),
    ],
)
def test_evaluate_names_the_missing_malignancy_class_instead_of_an_undefined_auc(malignant, words, tmp_path):
    from types import SimpleNamespace

    from noduleflow.evaluate import Evaluation
    from noduleflow.metrics.malignancy import MalignancyScore

    matching = SimpleNamespace(n_hits=4, n_false_positives=2, n_ignored=0, n_dropped=0)
    froc = SimpleNamespace(n_scans=3, n_nodules=4, matching=matching)
    auc, ruler = (2 / 3, 1 / 3) if 0 < malignant < 4 else (math.nan, math.nan)
    score = MalignancyScore(auc, 4, malignant, diameter_auc=ruler, difference=auc - ruler, diameter_nodules=4)
    report = Evaluation(froc, score, "annotations.csv", tmp_path / "j", tmp_path / "p")
    lines = report.describe().splitlines()
    assert lines[1] == words and not re.search(r"\bnan\b", report.describe())  # "malignancy" holds "nan"


def test_a_run_summary_without_positives_prints_words_not_nan(tmp_path):
    from noduleflow.train.run import RunResult

    best = {"best_epoch": 0, "val_ap": -math.inf, "epochs": 2, "steps": 4, "stopped_early": False}
    test = {"loss": 0.3, "accuracy": 0.9, "recall": 0.0, "auc": math.nan, "ap": math.nan, "f1_best": math.nan}
    text = RunResult(tmp_path, best, test, 1.0).describe()
    assert "best best_epoch 0, val_ap n/a" in text
    assert text.splitlines()[-1] == "test loss 0.3000  accuracy 0.9000  no positive in the test split"
    assert not re.search(r"\b(nan|inf)\b", text)
