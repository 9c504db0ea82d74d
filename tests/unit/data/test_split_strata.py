"""split_series stratified by `series_strata`: validation keeps nodules (and both malignancy labels) wherever
the data can spare them, for any layout of nodules over the series."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from noduleflow.data.luna16 import Nodule, series_strata, split_series


def _nodules(layout: list[list[bool | None]]) -> list[Nodule]:
    """layout[i]: the malignancy labels of series i's nodules (empty: no nodule)."""
    return [
        Nodule(f"1.2.{i:03d}", (float(k), 0.0, 0.0), 6.0, malignant)
        for i, labels in enumerate(layout)
        for k, malignant in enumerate(labels)
    ]


_LABELLED = st.lists(st.lists(st.booleans(), max_size=3), min_size=2, max_size=40)
_UNLABELLED = st.lists(st.lists(st.none(), max_size=3), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    layout=st.one_of(_LABELLED, _UNLABELLED),
    val_fraction=st.floats(0.05, 0.5),
    test_fraction=st.sampled_from([0.0, 0.1, 0.2]),
    seed=st.integers(0, 2**16),
)
# found by hypothesis: test held the last malignant series validation needed and kept it
@example(layout=[[], [False], [False], [True], [True]], val_fraction=0.5, test_fraction=0.1, seed=0)
def test_validation_keeps_positives_wherever_training_can_spare_them(layout, val_fraction, test_fraction, seed):
    uids = [f"1.2.{i:03d}" for i in range(len(layout))]
    nodules = _nodules(layout)
    strata = series_strata(nodules)
    split = split_series(uids, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strata=strata)
    plain = split_series(uids, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    # same sizes as the unstratified split, disjoint and complete, and deterministic by seed
    assert (len(split.train), len(split.val), len(split.test)) == (len(plain.train), len(plain.val), len(plain.test))
    assert sorted(split.train + split.val + split.test) == uids
    assert split == split_series(
        reversed(uids), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strata=strata
    )
    with_nodules = set(strata)
    if with_nodules:
        assert with_nodules & set(split.train), "training lost every series with nodules"
    if len(with_nodules) >= 2 and split.val:
        assert with_nodules & set(split.val), "validation lost every series with nodules"
    malignant = [uid for uid, name in strata.items() if name == "malignant"]
    benign = [uid for uid, name in strata.items() if name == "benign"]
    if len(malignant) >= 2 and len(benign) >= 2 and len(split.val) >= 2:
        assert set(malignant) & set(split.val) and set(benign) & set(split.val)


def test_a_rare_positive_series_goes_to_validation_and_the_split_depends_on_the_seed():
    uids = [f"1.2.{i:03d}" for i in range(20)]
    strata = {"1.2.004": "nodule", "1.2.017": "nodule"}  # 2 of 20 series hold nodules, val takes 2
    for seed in range(20):
        split = split_series(uids, val_fraction=0.1, seed=seed, strata=strata)
        assert len(split.val) == 2 and len(set(split.val) & set(strata)) == 1
        assert len(set(split.train) & set(strata)) == 1
    assert len({split_series(uids, val_fraction=0.1, seed=s, strata=strata) for s in range(5)}) > 1


def test_labels_spread_in_proportion_over_the_parts():
    uids = [f"1.2.{i:03d}" for i in range(40)]
    strata = {uid: "malignant" if i % 4 == 0 else "benign" for i, uid in enumerate(uids) if i % 2 == 0}
    split = split_series(uids, val_fraction=0.25, seed=7, strata=strata)
    val_labels = [strata.get(uid, "") for uid in split.val]
    # 10 in validation from 20 without nodules, 10 benign, 10 malignant series: systematic sampling gives 5/2-3/2-3
    assert val_labels.count("") == 5
    assert {val_labels.count("benign"), val_labels.count("malignant")} <= {2, 3}


def test_series_strata_names_each_series_by_its_nodules():
    nodules = _nodules([[], [None], [False, False], [False, True]])
    assert series_strata(nodules) == {"1.2.001": "nodule", "1.2.002": "benign", "1.2.003": "malignant"}


def test_unknown_strata_keys_and_empty_labels_count_as_no_nodule():
    uids = ["a", "b", "c", "d"]
    assert split_series(uids, val_fraction=0.25, seed=1, strata={"zzz": "nodule", "a": ""}) == split_series(
        uids, val_fraction=0.25, seed=1, strata={}
    )


def test_index_split_is_stratified(luna):
    from noduleflow.data.luna16 import load_index

    with pytest.warns(UserWarning):
        index = load_index(luna["root"])
    split = index.split(val_fraction=0.34, seed=0)
    assert split == split_series(index.series_uids, val_fraction=0.34, seed=0, strata=series_strata(index.nodules))
