"""The LUNA16 hit rule is one function, and every user of it decides a boundary point the same way.

noduleCADEvaluationLUNA16.py (evaluateCAD) counts a mark as a hit when ``dist < radiusSquared``:
a mark at exactly the radius is a miss. A negative diameter reads as 10 mm.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.data.hit_rule import UNKNOWN_DIAMETER_MM, hits, radius_sq
from noduleflow.data.luna16 import Nodule, nearest, on_findings
from noduleflow.metrics.froc import Mark, match_marks

UID = "1.2.3"


def test_a_point_at_exactly_the_radius_is_a_miss_and_just_inside_is_a_hit():
    centre, diameter = [[10.0, -20.0, 30.0]], [6.0]  # radius 3 mm: squared radius 9 exactly
    points = [[13.0, -20.0, 30.0], [10.0, -17.0, 30.0], [10.0, -20.0, 27.0], [12.999, -20.0, 30.0], [10.0, -20.0, 30.0]]
    assert hits(centre, diameter, points).tolist() == [[False, False, False, True, True]]


def test_a_negative_diameter_reads_as_the_unknown_size():
    assert radius_sq([-1.0, 4.0]).tolist() == [(UNKNOWN_DIAMETER_MM / 2) ** 2, 4.0]
    assert hits([[0.0, 0.0, 0.0]], [-1.0], [[4.99, 0, 0], [5.0, 0, 0]]).tolist() == [[True, False]]


def test_every_user_of_the_rule_misses_a_point_on_the_boundary():
    nodule = Nodule(UID, (0.0, 0.0, 0.0), 8.0)  # radius 4 mm
    on_edge, inside = (4.0, 0.0, 0.0), (3.5, 0.0, 0.0)
    assert on_findings([UID, UID], np.array([on_edge, inside]), [nodule]).tolist() == [False, True]
    assert nearest(list(on_edge), [nodule]) is None
    assert nearest(list(inside), [nodule]) == nodule
    m = match_marks([Mark(UID, on_edge, 0.9), Mark(UID, inside, 0.4)], [nodule], [UID])
    assert (m.n_hits, m.n_false_positives, int(m.best_mark[0])) == (1, 1, 1)


def test_nearest_picks_the_closest_centre_among_the_nodules_hit():
    far, close = Nodule(UID, (0.0, 0.0, 0.0), 20.0), Nodule(UID, (3.0, 0.0, 0.0), 4.0)
    assert nearest([2.0, 0.0, 0.0], [far, close]) == close
    assert nearest([-5.0, 0.0, 0.0], [far, close]) == far


coord = st.floats(-8, 8, allow_nan=False).map(lambda v: round(v * 4) / 4)  # quarter-mm grid: boundary points occur


@settings(max_examples=60, deadline=None)
@given(
    point=st.tuples(coord, coord, coord),
    centre=st.tuples(coord, coord, coord),
    diameter=st.sampled_from([-1.0, 1.0, 2.0, 4.0, 6.0, 8.0]),
)
def test_froc_mining_and_the_csv_join_agree_on_every_point(point, centre, diameter):
    nodule = Nodule(UID, centre, diameter)
    expected = sum((p - c) ** 2 for p, c in zip(point, centre)) < radius_sq([diameter])[0]
    assert bool(on_findings([UID], np.array([point]), [nodule])[0]) == expected
    assert (nearest(list(point), [nodule]) is not None) == expected
    assert match_marks([Mark(UID, point, 0.5)], [nodule], [UID]).n_hits == int(expected)
