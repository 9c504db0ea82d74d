"""Ground truth before voxels: scanner geometry, nodule design and placement, malignancy, vessels, candidates."""

from __future__ import annotations

import numpy as np
import pytest

from noduleflow.synth import KINDS, plan_scan
from noduleflow.synth.body import sample_body
from noduleflow.synth.nodules import design, malignancy, sample_diameter, sample_kind
from noduleflow.synth.placement import place_nodules
from noduleflow.synth.vessels import grow_vessels


@pytest.fixture(scope="module")
def chest():
    """One patient's body and vessel tree."""
    rng = np.random.default_rng(2)
    body = sample_body(rng)
    return body, grow_vessels(body, rng)


def test_plans_repeat_exactly_and_differ_between_scans():
    a, b, c = plan_scan(4, 0), plan_scan(4, 0), plan_scan(4, 1)
    assert a.series_uid == b.series_uid != c.series_uid
    assert np.array_equal(a.candidates_xyz, b.candidates_xyz) and np.array_equal(a.origin_xyz, b.origin_xyz)
    assert [n.diameter_mm for n in a.nodules] == [n.diameter_mm for n in b.nodules]
    assert not np.array_equal(a.candidates_xyz[:10], c.candidates_xyz[:10])


def test_small_and_full_image_the_same_patient_like_their_scanners():
    for index in range(2):
        small, full = plan_scan(9, index, "small"), plan_scan(9, index, "full")
        assert small.series_uid != full.series_uid
        assert [tuple(n.centre) for n in small.nodules] == [tuple(n.centre) for n in full.nodules]
        i, r, c = small.shape_irc
        assert 192 <= r == c <= 256 and 100 <= i <= 140
        assert 0.6 * 512 / r <= small.spacing_xyz[0] == small.spacing_xyz[1]
        assert full.shape_irc[1:] == (512, 512) and 0.6 <= full.spacing_xyz[0] <= 0.95
        assert full.spacing_xyz[2] in (0.625, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5)
        # the whole chest fits in the field of view, and the lungs in the slices
        for plan in (small, full):
            fov_lo = plan.origin_xyz - plan.offset_xyz
            fov_hi = fov_lo + plan.spacing_xyz * np.array(plan.shape_irc[::-1])
            half = plan.body.half_width
            assert fov_lo[0] < -half and fov_hi[0] > half and fov_lo[2] < -15 and fov_hi[2] > plan.body.lung_height


@pytest.mark.parametrize("kind", KINDS)
def test_annotated_diameter_is_the_equivalent_sphere_of_the_shape(kind):
    rng = np.random.default_rng(len(kind))
    nodule = design(rng, 10.0, kind)
    ext = nodule.extent
    ax = np.linspace(-ext, ext, 81)
    z, y, x = ax[:, None, None], ax[None, :, None], ax[None, None, :]
    level = nodule.level(x, y, z)
    if len(nodule.spicules):
        level = np.minimum(level, nodule.spicules.distance(x, y, z))
    volume = (level < 0).sum() * (ax[1] - ax[0]) ** 3
    assert (6 * volume / np.pi) ** (1 / 3) == pytest.approx(10.0, rel=0.04)


def test_malignancy_follows_size_and_look():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(3000):
        d = sample_diameter(rng)
        kind = sample_kind(rng, d)
        rows.append((d, kind, malignancy(rng, d, kind, "isolated")[0]))
    d = np.array([r[0] for r in rows])
    kind = np.array([r[1] for r in rows])
    bad = np.array([r[2] for r in rows])
    assert 3.2 <= d.min() and d.max() <= 30 and set(kind) == set(KINDS)
    assert d[bad].mean() > d[~bad].mean() + 2.0  # larger nodules are more often malignant
    assert 0.1 < bad.mean() < 0.5  # both classes are common, and they overlap in size
    assert d[bad].min() < 6.0 < d[~bad].max() - 10
    assert bad[kind == "calcified"].mean() < 0.05 < 0.4 < bad[kind == "spiculated"].mean()


def test_nodules_sit_in_the_lung_where_their_site_says(chest):
    body, tree = chest
    rng = np.random.default_rng(1)
    placed = [place_nodules(body, tree, rng) for _ in range(12)]
    assert {len(p) for p in placed} <= set(range(5)) and sum(map(len, placed)) >= 12
    nodules = [n for p in placed for n in p]
    assert {n.site for n in nodules} == {"isolated", "juxta-pleural", "juxta-vascular"}
    for group in placed:
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                assert np.linalg.norm(a.centre - b.centre) > a.extent + b.extent  # no overlaps
    for n in nodules:
        r = n.diameter_mm / 2
        assert 3.0 <= n.diameter_mm <= 30 and body.lung_inside(n.centre[None])[0]
        gap = tree.distance(n.centre[None], min_radius=1.0)[0]
        if n.site == "isolated":
            assert body.lung_inside(n.centre[None], margin=n.extent)[0] and gap > n.extent
        elif n.site == "juxta-pleural":
            assert not body.lung_inside(n.centre[None], margin=1.05 * r)[0]  # it reaches the wall
        else:
            assert tree.distance(n.centre[None], min_radius=1.0)[0] < r  # it touches a vessel 2 mm wide or more


def test_vessels_branch_into_ever_thinner_vessels_away_from_the_hilum(chest):
    body, tree = chest
    t = tree.tubes
    parent = {tuple(end): k for k, end in enumerate(t.b.tolist())}
    roots = 0
    for j, start in enumerate(t.a.tolist()):
        k = parent.get(tuple(start))
        if k is None:
            roots += 1
        else:
            assert t.r0[j] <= t.r0[k] + 1e-9  # a branch is never wider than the vessel it leaves
    assert roots == 4  # an artery and a vein per lung
    radius = 0.5 * (t.r0 + t.r1)
    hilum = np.array([[-body.hilum_x, 0, 0.54 * body.lung_height], [body.hilum_x, 0, 0.54 * body.lung_height]])
    far = np.linalg.norm((0.5 * (t.a + t.b))[:, None, :] - hilum[None], axis=2).min(axis=1)
    wide, thin = radius >= np.percentile(radius, 95), radius <= np.median(radius)
    assert 4.0 < radius.max() <= 5.0 and np.median(radius) < 1.2 and far[wide].mean() < 0.85 * far[thin].mean()
    assert len(tree.bifurcations) > 1000 and body.lung_inside(tree.bifurcations).mean() > 0.8


def test_candidates_mix_hard_negatives_and_points_on_every_nodule():
    plan = plan_scan(6, 2)
    cls = plan.candidates_class
    assert set(np.unique(cls)) <= {0, 1} and 200 <= (cls == 0).sum() <= 460
    pos = plan.candidates_xyz[cls == 1]
    assert len(plan.nodules) <= len(pos) <= 3 * len(plan.nodules)
    for n in plan.nodules:
        assert (np.linalg.norm(pos - n.centre, axis=1) < 0.25 * n.diameter_mm / 2 + 1e-9).any()
    neg = plan.candidates_xyz[cls == 0]
    near_vessel = plan.vessels.distance(neg, min_radius=0.5) < 2.5
    near_wall = ~plan.body.lung_inside(neg, margin=5.0)
    assert (near_vessel | near_wall).mean() > 0.8  # hard negatives: on vessels or on the wall
