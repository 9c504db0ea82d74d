"""Malignancy ROC AUC of the hit nodules beside the diameter-only baseline, with bootstrap intervals:
cases worked out on paper, and the vectorised resample AUC against scikit-learn's on random data."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from noduleflow.data.luna16 import Nodule
from noduleflow.metrics.classification import roc_auc_weighted
from noduleflow.metrics.froc import Mark, match_marks
from noduleflow.metrics.malignancy import malignancy_auc, malignancy_inputs


def _nod(x, diameter, malignant):
    return Nodule("a", (float(x), 0.0, 0.0), diameter, malignant)


def _mark(x, p, malignancy):
    return Mark("a", (float(x), 0.0, 0.0), p, malignancy)


# 6 nodules 50 mm apart, each hit by one mark; the model ranks the 3 malignant above the 3 benign, the
# diameter orders 7 of the 9 malignant-benign pairs right (10 beats all 3; 8 beats 6 and 4; 6.5 beats 6 and 4)
DIAMETERS = (10.0, 8.0, 6.5, 9.0, 6.0, 4.0)
MALIGNANT = (True, True, True, False, False, False)
SIX = [_nod(50 * i, d, m) for i, (d, m) in enumerate(zip(DIAMETERS, MALIGNANT))]
SIX_MARKS = [_mark(50 * i, 0.9, 0.9 if m else 0.1) for i, m in enumerate(MALIGNANT)]


def test_known_answer_model_perfect_and_diameter_seven_of_nine_pairs():
    score = malignancy_auc(match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, bootstrap=500, seed=3)
    assert (score.nodules, score.malignant, score.diameter_nodules) == (6, 3, 6)
    assert score.auc == 1.0
    assert score.diameter_auc == pytest.approx(7 / 9)
    assert score.difference == pytest.approx(2 / 9)
    assert score.auc_ci == (1.0, 1.0)  # a perfect ranking stays perfect in every resample with both classes
    for value, (lo, hi) in [(score.diameter_auc, score.diameter_ci), (score.difference, score.difference_ci)]:
        assert lo <= value <= hi and lo < hi
    assert 0.0 <= score.diameter_ci[0] and score.diameter_ci[1] == 1.0
    assert (score.bootstrap, score.confidence) == (500, 0.95)
    again = malignancy_auc(match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, bootstrap=500, seed=3)
    assert again == score  # reproducible with the seed


def test_the_seed_draws_the_resamples_and_the_difference_is_paired():
    rng = np.random.default_rng(0)
    diameters = rng.uniform(4, 20, 40)
    malignant = rng.random(40) < 0.3 + 0.4 * (diameters > 10)
    nodules = [_nod(50 * i, d, bool(m)) for i, (d, m) in enumerate(zip(diameters, malignant))]
    marks = [_mark(50 * i, 0.9, float(np.clip(d / 20 + rng.normal(0, 0.2), 0, 1))) for i, d in enumerate(diameters)]
    matching = match_marks(marks, nodules, ["a"])
    one, two = (malignancy_auc(matching, marks, bootstrap=300, seed=s) for s in (1, 2))
    assert one.auc == two.auc and one.auc_ci != two.auc_ci
    for value, (lo, hi) in [(one.auc, one.auc_ci), (one.diameter_auc, one.diameter_ci)]:
        assert lo < value < hi
    # the model's score follows the diameter, so the paired difference varies less than either AUC
    width = {name: hi - lo for name, (lo, hi) in (("model", one.auc_ci), ("difference", one.difference_ci))}
    assert one.difference_ci[0] < one.difference < one.difference_ci[1] and width["difference"] < width["model"]


def test_without_bootstrap_the_intervals_are_nan():
    score = malignancy_auc(match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, bootstrap=0)
    assert score.diameter_auc == pytest.approx(7 / 9)
    assert all(math.isnan(v) for ci in (score.auc_ci, score.diameter_ci, score.difference_ci) for v in ci)


def test_the_baseline_reads_the_given_diameters_and_skips_missing_ones():
    matching = match_marks(SIX_MARKS, SIX, ["a"])
    # the malignancy CSV's diameters in place of annotations.csv's: now the diameter ranks every pair right
    score = malignancy_auc(matching, SIX_MARKS, diameters=(10, 9, 8, 7, 6, 5), bootstrap=0)
    assert score.diameter_auc == 1.0 and score.difference == 0.0
    # the 10 mm malignant nodule without a diameter: 5 nodules, pairs (8,9)x (6.5,9) wrong -> 4/6 right
    missing = malignancy_auc(matching, SIX_MARKS, diameters=(math.nan, *DIAMETERS[1:]), bootstrap=200)
    assert (missing.nodules, missing.diameter_nodules) == (6, 5)
    assert missing.auc == 1.0 and missing.diameter_auc == pytest.approx(4 / 6)
    assert missing.difference == pytest.approx(1 - 4 / 6)  # over the same 5 nodules
    with pytest.raises(ValueError, match="diameters has 2 entries for 6 nodules"):
        malignancy_auc(matching, SIX_MARKS, diameters=(1.0, 2.0))


def test_only_hit_nodules_with_a_known_label_and_a_scored_best_mark_count():
    nodules = [_nod(0, 10, True), _nod(50, 10, False), _nod(100, 10, None), _nod(150, 10, True), _nod(200, 10, False)]
    marks = [
        _mark(0, 0.9, 0.1),
        _mark(1, 0.3, 0.99),  # the 0.9 mark is nodule 0's best: its 0.1 counts
        _mark(50, 0.8, 0.05),
        _mark(100, 0.8, 0.5),  # malignancy unknown
        _mark(200, 0.7, None),  # the best mark carries no malignancy
    ]  # the nodule at 150 is missed
    matching = match_marks(marks, nodules, ["a"])
    picked = malignancy_inputs(matching, marks)
    assert picked.index.tolist() == [0, 1] and picked.scores.tolist() == [0.1, 0.05]
    score = malignancy_auc(matching, marks, bootstrap=0)
    assert (score.nodules, score.malignant, score.auc) == (2, 1, 1.0)
    one_class = malignancy_auc(match_marks(marks[2:], nodules, ["a"]), marks[2:], bootstrap=50)
    assert one_class.nodules == 1 and math.isnan(one_class.auc) and math.isnan(one_class.auc_ci[0])


def test_the_resamples_holding_one_class_are_skipped():
    two = [_nod(0, 5, True), _nod(50, 4, False)]
    marks = [_mark(0, 0.9, 0.8), _mark(50, 0.9, 0.2)]
    score = malignancy_auc(match_marks(marks, two, ["a"]), marks, bootstrap=200)
    assert score.auc_ci == (1.0, 1.0) and score.diameter_ci == (1.0, 1.0)  # one class only: skipped, never 0 or NaN


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.booleans(), st.lists(st.integers(0, 3), min_size=3, max_size=3)),
        min_size=1,
        max_size=12,
    )
)
def test_weighted_auc_is_scikit_learns_with_sample_weights(data):
    scores = np.array([s for s, _, _ in data], dtype=float)  # few distinct values: many ties
    positive = np.array([p for _, p, _ in data])
    weights = np.array([w for _, _, w in data], dtype=float).T  # (3, K)
    got = roc_auc_weighted(scores, positive, weights)
    for row, value in zip(weights, got):
        if (row * positive).sum() > 0 and (row * ~positive).sum() > 0:
            assert value == pytest.approx(roc_auc_score(positive, scores, sample_weight=row))
            whole = np.repeat(np.arange(len(scores)), row.astype(int))  # the resample itself
            assert value == pytest.approx(roc_auc_score(positive[whole], scores[whole]))
        else:
            assert math.isnan(value)


def test_the_evaluate_line_holds_both_aucs_their_intervals_and_the_difference():
    from noduleflow.evaluate import describe_malignancy

    score = malignancy_auc(match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, bootstrap=500, seed=3)
    lo, hi = score.diameter_ci
    d_lo, d_hi = score.difference_ci
    assert describe_malignancy(score) == (
        "malignancy ROC AUC 1.000 (95% 1.00-1.00) over 6 hit nodules (3 malignant); "
        f"diameter alone 0.778 ({lo:.2f}-{hi:.2f}); difference +0.222 ({d_lo:+.2f} to {d_hi:+.2f})"
    )
    missing = malignancy_auc(
        match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, diameters=(math.nan, *DIAMETERS[1:]), bootstrap=0
    )
    assert describe_malignancy(missing) == (
        "malignancy ROC AUC 1.000 over 6 hit nodules (3 malignant); diameter alone 0.667 over the 5 with an "
        "annotated diameter (1 without one skipped); difference +0.333"
    )
    none = malignancy_auc(match_marks(SIX_MARKS, SIX, ["a"]), SIX_MARKS, diameters=[math.nan] * 6, bootstrap=0)
    assert describe_malignancy(none).endswith("; diameter alone: no hit nodule has an annotated diameter")
