"""LUNA16 FROC/CPM on hand-built scans whose scores are worked out on paper, and against the
evaluation script's own arithmetic (scikit-learn's roc_curve + np.interp) on random submissions.

Unless said otherwise nodules are 10 mm (radius 5 mm) and lie on the x axis of their scan.
"""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from noduleflow.data.luna16 import Nodule
from noduleflow.metrics.froc import FP_RATES, Mark, froc, match_marks


def _nod(uid, x, diameter=10.0, malignant=None):
    return Nodule(uid, (float(x), 0.0, 0.0), diameter, malignant)


def _mark(uid, x, p, y=0.0, z=0.0, malignancy=None):
    return Mark(uid, (float(x), float(y), float(z)), p, malignancy)


FOUR = [_nod("a", 0), _nod("a", 50), _nod("b", 0), _nod("b", 50)]  # 2 scans, 4 nodules
FAR = 200  # x of a mark that hits nothing


def test_perfect_detector_scores_one_with_a_degenerate_interval():
    marks = [_mark(n.series_uid, n.center_xyz[0], 0.9) for n in FOUR]
    r = froc(marks, FOUR, ["a", "b"])
    assert r.cpm == 1.0
    assert r.sensitivities == (1.0,) * 7
    assert r.cpm_ci == (1.0, 1.0)
    assert r.sensitivity_ci == ((1.0, 1.0),) * 7
    assert (r.matching.n_hits, r.matching.n_false_positives, r.n_nodules, r.n_scans) == (4, 0, 4, 2)


def test_half_the_nodules_without_false_positives_scores_one_half():
    marks = [_mark("a", 0, 0.9), _mark("b", 50, 0.4)]
    r = froc(marks, FOUR, ["a", "b"])
    assert r.cpm == 0.5
    assert r.sensitivities == (0.5,) * 7


def test_false_positives_at_known_ranks():
    # probability order: hit, FP, hit, FP, hit, FP (one nodule missed); 2 scans.
    # curve (FPs/scan, sens): (0,0) (0,1/4) (1/2,1/4) (1/2,1/2) (1,1/2) (1,3/4) (3/2,3/4)
    # at 1/8, 1/4: 1/4; at 1/2: top of the step, 1/2; at 1: 3/4; at 2, 4, 8: the last sensitivity, 3/4
    marks = [
        _mark("a", 0, 0.9),
        _mark("a", FAR, 0.8),
        _mark("a", 50, 0.7),
        _mark("b", FAR, 0.6),
        _mark("b", 0, 0.5),
        _mark("b", FAR, 0.4, y=50),
    ]
    r = froc(marks, FOUR, ["a", "b"], bootstrap=0)
    assert r.sensitivities == (0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75)
    assert r.cpm == pytest.approx(4 / 7)
    assert r.fps.tolist() == [0, 0, 0.5, 0.5, 1, 1, 1.5]
    assert r.sensitivity.tolist() == [0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75]
    assert math.isnan(r.cpm_ci[0])


def test_a_hit_and_a_false_positive_tied_in_probability_make_one_diagonal_step():
    # 1 scan, 2 nodules: hit 0.9, then hit and FP both at 0.8 -> (0,0) (0,1/2) (1,1): linear in between
    nodules = [_nod("a", 0), _nod("a", 50)]
    marks = [_mark("a", 0, 0.9), _mark("a", 50, 0.8), _mark("a", FAR, 0.8)]
    r = froc(marks, nodules, ["a"], bootstrap=0)
    assert r.sensitivities == pytest.approx((0.5625, 0.625, 0.75, 1, 1, 1, 1))
    assert r.cpm == pytest.approx(5.9375 / 7)


def test_a_nodule_hit_twice_counts_once_with_its_highest_probability():
    # marks 0.5 and 0.9 on one nodule, an FP at 0.7: the 0.9 hit ranks first -> CPM 1 (with the 0.5
    # as the hit the FP would rank first and the CPM be 4/7; as an FP the extra mark would add one)
    marks = [_mark("a", 0, 0.5), _mark("a", 2, 0.9), _mark("a", FAR, 0.7)]
    r = froc(marks, [_nod("a", 0)], ["a"], bootstrap=0)
    m = r.matching
    assert (m.n_hits, m.n_false_positives, m.n_double) == (1, 1, 1)
    assert r.cpm == 1.0
    assert m.best_mark.tolist() == [1]


def test_marks_on_excluded_findings_are_neither_hits_nor_false_positives():
    nodules = [_nod("a", 0)]
    excluded = [_nod("a", 100, diameter=-1.0)]  # size unknown: read as 10 mm
    marks = [_mark("a", 103, 0.95), _mark("a", 0, 0.5)]
    r = froc(marks, nodules, ["a"], excluded=excluded, bootstrap=0)
    assert (r.matching.n_ignored, r.matching.n_false_positives, r.cpm) == (1, 0, 1.0)
    # without the exclusion the 0.95 mark is an FP above the hit: sensitivity 0 below 1 FP/scan
    r = froc(marks, nodules, ["a"], bootstrap=0)
    assert (r.matching.n_false_positives, r.cpm) == (1, pytest.approx(4 / 7))
    # just outside the excluded finding's 5 mm it is an FP again
    r = froc([_mark("a", 105.5, 0.95), _mark("a", 0, 0.5)], nodules, ["a"], excluded=excluded, bootstrap=0)
    assert (r.matching.n_ignored, r.matching.n_false_positives) == (0, 1)


def test_a_mark_on_a_nodule_and_an_excluded_finding_is_a_hit():
    r = froc([_mark("a", 0, 0.9)], [_nod("a", 0)], ["a"], excluded=[_nod("a", 1, diameter=4.0)], bootstrap=0)
    assert (r.matching.n_hits, r.matching.n_ignored, r.cpm) == (1, 0, 1.0)


@pytest.mark.parametrize(
    "offset, hit",
    [
        ((4.999, 0, 0), True),
        ((5.0, 0, 0), False),
        ((5.001, 0, 0), False),
        ((3.0, 3.999, 0), True),
        ((3.0, 4.0, 0), False),
        ((0, 0, -4.999), True),
        ((0, 3.0, -4.0), False),
    ],
)
def test_a_hit_lies_strictly_within_the_radius(offset, hit):
    r = froc([Mark("a", offset, 0.9)], [_nod("a", 0)], ["a"], bootstrap=0)
    assert (r.matching.n_hits, r.matching.n_false_positives) == ((1, 0) if hit else (0, 1))
    assert r.cpm == (1.0 if hit else 0.0)


def test_at_most_100_marks_per_scan_keeping_the_most_probable():
    fps = [_mark("a", FAR + i, (i + 1) / 1000) for i in range(150)]  # 0.001 ... 0.150
    ranked_101st = froc([*fps, _mark("a", 0, 0.0505)], [_nod("a", 0)], ["a"], bootstrap=0).matching
    assert (ranked_101st.n_marks, ranked_101st.n_dropped, ranked_101st.n_hits) == (100, 51, 0)
    ranked_100th = froc([*fps, _mark("a", 0, 0.0515)], [_nod("a", 0)], ["a"], bootstrap=0).matching
    assert (ranked_100th.n_marks, ranked_100th.n_dropped, ranked_100th.n_hits) == (100, 51, 1)
    unlimited = match_marks([*fps, _mark("a", 0, 0.0505)], [_nod("a", 0)], ["a"], max_marks=0)
    assert (unlimited.n_marks, unlimited.n_dropped, unlimited.n_hits) == (151, 0, 1)


def test_marks_tied_with_the_101st_are_dropped_as_the_script_drops_them():
    marks = [_mark("a", FAR + i, 0.5) for i in range(150)] + [_mark("a", 0, 0.9)]
    m = match_marks(marks, [_nod("a", 0)], ["a"])
    assert (m.n_marks, m.n_dropped, m.n_hits, m.n_false_positives) == (1, 150, 1, 0)


def test_scans_without_marks_count_in_false_positives_per_scan():
    # an FP above the only hit on scan a; scan b has no marks and no nodules but halves FPs/scan:
    # (0,0) (1/2,0) (1/2,1) -> 0, 0, 1, 1, 1, 1, 1 = 5/7 (it would be 4/7 over scan a alone)
    marks = [_mark("a", FAR, 0.9), _mark("a", 0, 0.5)]
    assert froc(marks, [_nod("a", 0)], ["a", "b"], bootstrap=0).cpm == pytest.approx(5 / 7)
    assert froc(marks, [_nod("a", 0)], ["a"], bootstrap=0).cpm == pytest.approx(4 / 7)
    # and their nodules are misses
    r = froc([_mark("a", 0, 0.9), _mark("a", 50, 0.9)], FOUR, ["a", "b"], bootstrap=0)
    assert (r.matching.n_hits, r.cpm) == (2, 0.5)


def test_marks_of_unlisted_series_are_counted_and_not_scored():
    marks = [_mark("a", 0, 0.9), _mark("z", 0, 0.99), _mark("z", 9, 0.99)]
    r = froc(marks, [_nod("a", 0), _nod("z", 0)], ["a"], bootstrap=0)
    assert (r.matching.n_unlisted, r.matching.n_marks, r.n_nodules, r.cpm) == (2, 1, 1, 1.0)


def test_no_hit_scores_zero_and_no_nodule_is_undefined():
    assert froc([_mark("a", FAR, 0.9)], [_nod("a", 0)], ["a"], bootstrap=0).cpm == 0.0
    assert froc([], [_nod("a", 0)], ["a", "b"], bootstrap=0).cpm == 0.0
    r = froc([_mark("a", FAR, 0.9)], [], ["a"], bootstrap=10)
    assert math.isnan(r.cpm) and math.isnan(r.cpm_ci[0])


def _random_case(seed, n_scans=30, decimals=None):
    rng = np.random.default_rng(seed)
    nodules, marks = [], []
    for s in range(n_scans):
        uid = f"s{s}"
        for _ in range(rng.integers(0, 4)):
            nodules.append(Nodule(uid, tuple(rng.uniform(-100, 100, 3)), float(rng.uniform(3, 25))))
            if rng.random() < 0.7:
                for _ in range(rng.integers(1, 3)):
                    marks.append(
                        Mark(uid, tuple(np.add(nodules[-1].center_xyz, rng.normal(0, 2, 3))), float(rng.random()))
                    )
        for _ in range(rng.integers(0, 20)):
            marks.append(Mark(uid, tuple(rng.uniform(-150, 150, 3)), float(rng.random() * 0.9)))
    if decimals is not None:  # ties between hits and false positives
        marks = [m._replace(probability=round(m.probability, decimals)) for m in marks]
    excluded = [Nodule(m.series_uid, m.center_xyz, 4.0) for m in marks[::7]]
    return marks, nodules, [f"s{s}" for s in range(n_scans)], excluded


def _script_sensitivities(matching):
    """The evaluation script's computeFROC + np.interp, on the entries of `matching`."""
    missed = len(matching.nodules) - matching.n_hits
    gt, prob = matching.is_hit.astype(float), matching.probability
    fpr, tpr, _ = roc_curve(gt, prob)
    detected = gt.sum()
    fps = fpr * (len(prob) - detected) / len(matching.series_uids)
    sens = (tpr * detected) / (detected + missed)
    return np.interp(FP_RATES, fps, sens)


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_matches_the_scripts_roc_curve_arithmetic(seed, decimals):
    marks, nodules, series, excluded = _random_case(seed, decimals=decimals)
    r = froc(marks, nodules, series, excluded=excluded, bootstrap=0)
    assert r.matching.n_false_positives > 0 and r.matching.n_hits > 0
    assert np.array(r.sensitivities) == pytest.approx(_script_sensitivities(r.matching), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 4])
def test_matching_agrees_with_brute_force(seed):
    marks, nodules, series, excluded = _random_case(seed)
    m = match_marks(marks, nodules, series, excluded=excluded)
    dist = lambda a, b: sum((p - q) ** 2 for p, q in zip(a, b))  # noqa: E731 - a one-line squared distance
    on = [
        [
            i
            for i, mk in enumerate(marks)
            if mk.series_uid == n.series_uid and dist(mk.center_xyz, n.center_xyz) < (n.diameter_mm / 2) ** 2
        ]
        for n in nodules
    ]
    best = [max(hits, key=lambda i: marks[i].probability) if hits else -1 for hits in on]
    used = {i for hits in on for i in hits}
    ignored = {
        i
        for i, mk in enumerate(marks)
        if i not in used
        and any(
            x.series_uid == mk.series_uid and dist(mk.center_xyz, x.center_xyz) < (x.diameter_mm / 2) ** 2
            for x in excluded
        )
    }
    assert m.best_mark.tolist() == best
    assert m.n_false_positives == len(marks) - len(used) - len(ignored)
    assert (m.n_ignored, m.n_double) == (len(ignored), sum(max(len(h) - 1, 0) for h in on))


def test_bootstrap_equals_scoring_resampled_scan_sets():
    # the vectorised bootstrap must score each resampling as the script would: the scans drawn
    # (with repeats) as a data set of their own, the scan count unchanged
    marks, nodules, series, excluded = _random_case(5, n_scans=12)
    keep = {n.series_uid for n in nodules}  # every scan has a nodule: no resampling is undefined
    series = [s for s in series if s in keep]
    draws = np.random.default_rng(7).integers(len(series), size=(40, len(series)))
    cpms = []
    for row in draws:
        copies = [(f"{series[j]}#{k}", series[j]) for k, j in enumerate(row)]
        rename = lambda items, new, old: [x._replace(series_uid=new) for x in items if x.series_uid == old]  # noqa: E731 - one line, used twice below
        cpms.append(
            froc(
                [m for new, old in copies for m in rename(marks, new, old)],
                [n for new, old in copies for n in rename(nodules, new, old)],
                [new for new, _ in copies],
                excluded=[x for new, old in copies for x in rename(excluded, new, old)],
                bootstrap=0,
            ).cpm
        )
    r = froc(marks, nodules, series, excluded=excluded, bootstrap=40, seed=7)
    ordered = np.sort(cpms)
    assert r.cpm_ci == pytest.approx((ordered[1], ordered[39]), abs=1e-12)  # floor(0.025 * 40), floor(0.975 * 40)


def test_bootstrap_interval_holds_the_estimate_and_follows_the_seed():
    marks, nodules, series, excluded = _random_case(6, n_scans=60)
    r = froc(marks, nodules, series, excluded=excluded, bootstrap=300, seed=1)
    assert r.cpm_ci[0] < r.cpm < r.cpm_ci[1]
    for sens, (lo, hi) in zip(r.sensitivities, r.sensitivity_ci):
        assert lo <= sens <= hi
    assert (r.band_lower <= r.band_upper).all()
    assert froc(marks, nodules, series, excluded=excluded, bootstrap=300, seed=1).cpm_ci == r.cpm_ci
    assert froc(marks, nodules, series, excluded=excluded, bootstrap=300, seed=2).cpm_ci != r.cpm_ci


def test_to_dict_is_json_ready():
    import json

    r = froc([_mark("a", 0, 0.9), _mark("a", FAR, 0.5)], [_nod("a", 0)], ["a"], bootstrap=20)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["cpm"] == 1.0 and d["false_positives"] == 1 and len(d["curve"]["fps"]) == len(d["curve"]["upper"])
