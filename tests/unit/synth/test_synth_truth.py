"""The generator's kind, site and noiseless malignancy log-odds of each annotated nodule, found again from its
LUNA16 centre."""

import math

import numpy as np
import pytest

from noduleflow.data.luna16 import Nodule
from noduleflow.synth import plan_scan
from noduleflow.synth.nodules import malignancy, malignancy_log_odds
from noduleflow.synth.truth import nodule_labels, nodule_log_odds


def test_labels_match_the_planned_nodules_and_unknowns_stay_unknown():
    plans = [plan_scan(5, i, "small") for i in range(2)]
    annotations = [
        Nodule(p.series_uid, tuple(round(float(v), 4) for v in p.world(n.centre)), n.diameter_mm)
        for p in plans
        for n in p.nodules
    ]
    expected = [{"kind": n.kind, "site": n.site} for p in plans for n in p.nodules]
    assert expected, "seed 5 plans nodules in its first two scans"
    stray = [Nodule(plans[0].series_uid, (999.0, 999.0, 999.0), 5.0), Nodule("1.2.3", (0.0, 0.0, 0.0), 5.0)]
    labels = nodule_labels(annotations + stray, seed=5, scans=2, size="small")
    assert labels[: len(expected)] == expected
    assert labels[len(expected) :] == [{"kind": "unknown", "site": "unknown"}] * 2


def test_log_odds_are_the_planned_nodules_noiseless_rule_and_nan_when_unmatched():
    plans = [plan_scan(5, i, "small") for i in range(2)]
    planned = [n for p in plans for n in p.nodules]
    annotations = [
        Nodule(p.series_uid, tuple(round(float(v), 4) for v in p.world(n.centre)), n.diameter_mm)
        for p in plans
        for n in p.nodules
    ]
    stray = Nodule("1.2.3", (0.0, 0.0, 0.0), 5.0)
    log_odds = nodule_log_odds(annotations + [stray], seed=5, scans=2, size="small")
    assert log_odds.shape == (len(planned) + 1,) and math.isnan(log_odds[-1])
    # the rule by hand: -1.3 + 2.2 log(d / 10) + the kind's shift, 0.4 less against the pleura
    shift = {"solid": 0.0, "ground-glass": 0.3, "part-solid": 1.5, "calcified": -3.5, "lobulated": 1.0}
    shift["spiculated"] = 2.2
    expected = [
        -1.3 + 2.2 * math.log(n.diameter_mm / 10) + shift[n.kind] - (0.4 if n.site == "juxta-pleural" else 0.0)
        for n in planned
    ]
    assert log_odds[:-1] == pytest.approx(expected, abs=1e-12)
    # the label was drawn around these log-odds: the noise (sd 0.7) keeps the probability within 4 sd of them
    logits = np.log([n.p_malignant / (1 - n.p_malignant) for n in planned])
    assert np.abs(logits - log_odds[:-1]).max() < 4 * 0.7


def test_the_log_odds_rule_is_written_once():
    # malignancy() draws its probability around malignancy_log_odds: with the noise fixed at 0 they agree
    class NoNoise:
        def normal(self, loc, scale):
            return 0.0

        def random(self):
            return 0.5

    _, p = malignancy(NoNoise(), 12.0, "spiculated", "juxta-pleural")
    assert math.log(p / (1 - p)) == pytest.approx(malignancy_log_odds(12.0, "spiculated", "juxta-pleural"))
