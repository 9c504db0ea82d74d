"""Candidate recall on hand-made marks: which nodules got a candidate, by size band and by label."""

import math

import pytest

from noduleflow.data.luna16 import Nodule
from noduleflow.metrics.froc import Mark, match_marks
from noduleflow.metrics.recall import candidate_recall, size_band

NODULES = [
    Nodule("a", (0.0, 0.0, 0.0), 3.5),
    Nodule("a", (50.0, 0.0, 0.0), 5.0),
    Nodule("b", (0.0, 0.0, 0.0), 12.0),
    Nodule("b", (0.0, 40.0, 0.0), 8.0),
]


def _matching(marks):
    return match_marks(marks, NODULES, ["a", "b"])


def test_counts_nodules_reached_by_any_mark_whatever_its_score():
    marks = [
        Mark("a", (0.5, 0.0, 0.0), 0.01),  # inside the 3.5 mm nodule (radius 1.75), a very low score
        Mark("b", (0.0, 0.0, 5.9), 0.9),  # inside the 12 mm one
        Mark("b", (0.0, 44.0, 0.0), 0.9),  # exactly on the 8 mm one's radius: a miss (distance < radius)
        Mark("a", (20.0, 0.0, 0.0), 0.5),  # nowhere
    ]
    result = candidate_recall(_matching(marks))
    assert (result.found, result.total) == (2, 4)
    assert result.recall == pytest.approx(0.5)
    assert result.missed == (1, 3)
    assert result.candidates_per_scan == pytest.approx(2.0)
    rows = {(r.group, r.value): (r.found, r.total) for r in result.rows}
    assert rows == {
        ("size", "< 4 mm"): (1, 1),
        ("size", "4-6 mm"): (0, 1),
        ("size", "6-10 mm"): (0, 1),
        ("size", ">= 10 mm"): (1, 1),
    }
    assert [r.value for r in result.rows] == ["< 4 mm", "4-6 mm", "6-10 mm", ">= 10 mm"]
    assert "candidate recall 0.500 (2 of 4" in result.describe()


def test_groups_by_labels_in_first_seen_order():
    labels = [
        {"kind": "solid", "site": "juxta-pleural"},
        {"kind": "ground-glass", "site": "isolated"},
        {"kind": "solid", "site": "isolated"},
        {"kind": "ground-glass", "site": "juxta-pleural"},
    ]
    marks = [Mark("a", (50.0, 0.0, 0.0), 0.3), Mark("b", (0.0, 40.0, 0.0), 0.3)]  # the two ground-glass ones
    result = candidate_recall(_matching(marks), labels=labels)
    rows = [(r.group, r.value, r.found, r.total) for r in result.rows if r.group != "size"]
    assert rows == [
        ("kind", "solid", 0, 2),
        ("kind", "ground-glass", 2, 2),
        ("site", "juxta-pleural", 1, 2),
        ("site", "isolated", 1, 2),
    ]
    with pytest.raises(ValueError, match="3 entries for 4 nodules"):
        candidate_recall(_matching(marks), labels=labels[:3])


def test_no_nodule_is_said_not_divided():
    result = candidate_recall(match_marks([Mark("a", (0.0, 0.0, 0.0), 1.0)], [], ["a"]))
    assert math.isnan(result.recall) and result.describe() == "candidate recall: no nodule in these scans"
    assert result.to_dict()["recall"] is None


@pytest.mark.parametrize(
    ("diameter", "band"),
    [(3.0, "< 4 mm"), (4.0, "4-6 mm"), (9.99, "6-10 mm"), (10.0, ">= 10 mm"), (-1.0, "unknown size")],
)
def test_size_band_edges(diameter, band):
    assert size_band(diameter) == band
