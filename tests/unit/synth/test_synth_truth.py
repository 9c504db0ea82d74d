"""The generator's kind and site of each annotated nodule, found again from its LUNA16 centre."""

from noduleflow.data.luna16 import Nodule
from noduleflow.synth import plan_scan
from noduleflow.synth.truth import nodule_labels


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
