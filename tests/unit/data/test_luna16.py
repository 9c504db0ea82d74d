"""The LUNA16 index: CSV join, counts of skipped rows, bad CSVs, and splits by series."""

from __future__ import annotations

import pytest
from luna_phantoms import NODULE_DIAMETER_MM, nodule_xyz, write_luna

from noduleflow.data.luna16 import load_index, split_series
from noduleflow.errors import CsvError, ScanError


def test_index_joins_candidates_to_annotations_and_counts_unknown_series(luna):
    with pytest.warns(UserWarning) as record:
        index = load_index(luna["root"])
    assert sorted(str(w.message).split(": ", 1)[1] for w in record) == [
        f"skipped {n} row(s) of 1 series not found under subset*/ (expected when only some subsets are on disk)"
        for n in (1, 1, 2)
    ]
    assert str(record[-1].message).startswith(str(luna["root"] / "candidates.csv"))
    assert index.series_uids == tuple(sorted(luna["uids"]))
    assert index.skipped == {"annotations.csv": 1, "annotations_with_malignancy.csv": 1, "candidates.csv": 2}
    assert len(index.candidates) == 3 * 5 and sum(c.is_nodule for c in index.candidates) == 3
    for k, volume in enumerate(luna["volumes"]):
        [pos] = [c for c in index.candidates if c.is_nodule and c.series_uid == volume.series_uid]
        assert pos.diameter_mm == NODULE_DIAMETER_MM  # matched to the annotation 0.5 mm away
        assert pos.malignant is (k % 2 == 0)
        assert pos.center_xyz[0] == pytest.approx(nodule_xyz(volume)[0] + 0.5)
    assert all(c.diameter_mm == 0.0 and c.malignant is None for c in index.candidates if not c.is_nodule)
    assert [n.malignant for n in index.nodules] == [True, False, True]
    assert index.folds == {luna["uids"][0]: 0, luna["uids"][1]: 0, luna["uids"][2]: 1}


def test_positive_far_from_every_annotation_gets_no_diameter(luna):
    csv = luna["root"] / "candidates.csv"
    x, y, z = nodule_xyz(luna["volumes"][0])
    csv.write_text(csv.read_text() + f"{luna['uids'][0]},{x + 20},{y},{z},1\n")
    with pytest.warns(UserWarning):
        index = load_index(luna["root"])
    far = [c for c in index.candidates if c.is_nodule and c.center_xyz[0] == pytest.approx(x + 20)]
    assert len(far) == 1 and far[0].diameter_mm == 0.0 and far[0].malignant is None


def test_without_malignancy_csv_nodules_have_no_malignancy(tmp_path):
    root = write_luna(tmp_path / "l", n_scans=2, malignancy=False)["root"]
    with pytest.warns(UserWarning):
        index = load_index(root)
    assert len(index.nodules) == 2 and all(n.malignant is None for n in index.nodules)


def test_missing_columns_name_the_file_and_the_columns(luna):
    csv = luna["root"] / "candidates.csv"
    csv.write_text("seriesuid,coordX,coordZ,label\n1.2,0,0,1\n")
    with pytest.warns(UserWarning), pytest.raises(CsvError) as err:
        load_index(luna["root"])
    assert str(csv) in err.value.message and "coordY, class" in err.value.message


def test_non_numeric_coordinate_is_reported_with_its_row(luna):
    csv = luna["root"] / "annotations.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split(",")[2], "abc")
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(CsvError, match=r"row 3 has a non-numeric coordY 'abc'"):
        load_index(luna["root"])


def test_missing_csv_and_missing_scans_are_clear_errors(luna, tmp_path):
    (luna["root"] / "annotations.csv").unlink()
    with pytest.raises(CsvError, match="annotations.csv: is missing"):
        load_index(luna["root"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="holds no scans"):
        load_index(tmp_path / "empty")


def test_split_by_series_is_disjoint_complete_and_deterministic():
    uids = [f"1.2.{i}" for i in range(50)]
    a = split_series(uids, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (35, 10, 5)
    assert set(a.train) | set(a.val) | set(a.test) == set(uids)
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.test) or set(a.val) & set(a.test))
    assert split_series(reversed(uids), val_fraction=0.2, test_fraction=0.1, seed=3) == a  # input order is irrelevant
    assert split_series(uids, val_fraction=0.2, test_fraction=0.1, seed=4) != a
    tiny = split_series(["a", "b"], val_fraction=0.1, test_fraction=0.1)
    assert len(tiny.train) == 1 and len(tiny.val) + len(tiny.test) == 1


def test_candidates_of_a_split_never_leak_across_series(luna):
    with pytest.warns(UserWarning):
        index = load_index(luna["root"])
    split = index.split(val_fraction=0.34, seed=0)
    train, val = index.candidates_of(split.train), index.candidates_of(split.val)
    assert len(train) + len(val) == len(index.candidates)
    assert {c.series_uid for c in train}.isdisjoint({c.series_uid for c in val})


def test_candidates_on_excluded_findings_can_be_left_out_but_nodules_never(luna):
    with pytest.warns(UserWarning):
        index = load_index(luna["root"])
    uid = luna["uids"][0]
    negatives = [c for c in index.candidates if c.series_uid == uid and not c.is_nodule]
    [positive] = [c for c in index.candidates if c.series_uid == uid and c.is_nodule]
    (x0, y0, z0), (x1, y1, z1) = negatives[0].center_xyz, negatives[1].center_xyz
    rows = [
        f"{uid},{x0 + 1.9},{y0},{z0},4.0",  # 1.9 mm away, radius 2 mm: on it
        f"{uid},{x1 + 4.9},{y1},{z1},-1",  # size unknown reads as 10 mm, as the evaluation does
        f"{uid},{negatives[2].center_xyz[0] + 2.1},{negatives[2].center_xyz[1]},{negatives[2].center_xyz[2]},4.0",  # 2.1 mm: off
        "{},{},{},{},6.0".format(uid, *positive.center_xyz),
    ]  # on the nodule's candidate: it stays
    (luna["root"] / "annotations_excluded.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "\n".join(rows) + "\n"
    )
    with pytest.warns(UserWarning):
        index = load_index(luna["root"])
    kept = index.candidates_of([uid], keep_excluded=False)
    assert set(index.candidates_of([uid])) - set(kept) == {negatives[0], negatives[1]}
    assert positive in kept and negatives[2] in kept
