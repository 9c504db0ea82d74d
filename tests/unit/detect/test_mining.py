"""Hard-negative mining: the segmentation's candidates on a prepared folder, labelled by the LUNA16 hit rule."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from detect_phantom import NODULE_IRC, NODULE_RADIUS_MM, DenseTissue, chest

from noduleflow.ct import write_volume
from noduleflow.data import prepare
from noduleflow.data.luna16 import load_index
from noduleflow.errors import CsvError
from noduleflow.recipes import mining


@pytest.fixture
def phantom_luna(tmp_path):
    """One phantom chest in the LUNA16 layout, its nodule annotated, one far negative candidate; cache prepared."""
    volume = chest()
    root = tmp_path / "luna"
    (root / "subset0").mkdir(parents=True)
    write_volume(volume, root / "subset0" / f"{volume.series_uid}.mhd")
    x, y, z = np.ravel(volume.irc_to_xyz(NODULE_IRC))
    (root / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{volume.series_uid},{x},{y},{z},{2 * NODULE_RADIUS_MM}\n"
    )
    (root / "candidates.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,class\n{volume.series_uid},{x + 30},{y},{z},0\n"
    )
    prepare(root, workers=1, progress=False)
    return root, volume, (x, y, z)


def test_mined_candidates_are_labelled_by_the_hit_rule_and_join_the_index(phantom_luna, tmp_path, monkeypatch):
    root, volume, nodule_xyz = phantom_luna
    monkeypatch.setattr("noduleflow.detect.models.load_part", lambda sub, part: DenseTissue())
    out = tmp_path / "run" / "mined.csv"
    counts = mining.mine_candidates(root, tmp_path / "run" / "segment", out, progress=False)
    assert counts == {"scans": 1, "of": 1, "candidates": 1, "positives": 1}
    [row] = list(csv.DictReader(out.open()))
    assert row["seriesuid"] == volume.series_uid and row["class"] == "1"
    mined_xyz = [float(row[k]) for k in ("coordX", "coordY", "coordZ")]
    assert np.linalg.norm(np.subtract(mined_xyz, nodule_xyz)) < 1.0  # the phantom nodule's centre
    index = load_index(root, extra_candidates=[out], extra_weight=4)
    assert len(index.candidates) == 2 and [c.weight for c in index.candidates] == [1, 4]  # candidates.csv's, then mined
    mined = [c for c in index.candidates if c.is_nodule]
    assert len(mined) == 1 and mined[0].diameter_mm == 2 * NODULE_RADIUS_MM  # joined to its annotation
    assert not list(out.parent.glob(".*.tmp"))  # written atomically


def test_mining_stops_at_its_voxel_budget_in_a_fixed_order():
    uids, voxels = tuple(f"s{i}" for i in range(10)), [100] * 5 + [300] * 5
    every = mining._within(uids, voxels, 1e9)
    assert sorted(every) == sorted(uids) and every != list(uids)  # all of them, shuffled
    some = mining._within(uids, voxels, 700)
    assert some == every[: len(some)] and some == mining._within(uids, voxels, 700)  # a prefix, the same every time
    spent = sum(voxels[uids.index(u)] for u in some)
    assert spent <= 700 < spent + voxels[uids.index(every[len(some)])]  # stops before the next would pass the budget
    assert mining._within(uids, voxels, 1) == every[:1]  # at least one scan


def test_a_missing_extra_candidates_file_is_named(phantom_luna, tmp_path):
    root, _, _ = phantom_luna
    with pytest.raises(CsvError, match="extra_candidates") as err:
        load_index(root, extra_candidates=[tmp_path / "nope.csv"])
    assert "nope.csv" in str(err.value)


def test_a_segmentation_only_predictor_gives_candidates_but_refuses_to_classify():
    from noduleflow.ct import lung_mask
    from noduleflow.detect import DetectorModels, Predictor

    volume = chest()
    predictor = Predictor(DetectorModels(DenseTissue(), None, None, None), runtime="torch")
    comps = predictor.candidates(volume, lung_mask(volume))
    assert len(comps) == 1 and np.allclose(comps.centers_irc[0], NODULE_IRC, atol=0.5)
    with pytest.raises(ValueError, match="no nodule classifier"):
        predictor.predict(volume)


def test_mining_also_takes_the_maps_peaks_below_the_threshold(phantom_luna, tmp_path, monkeypatch):
    """detect leaves the peaks out by default; mining adds them, so the classifier has seen such candidates."""
    from noduleflow.detect import predictor as predictor_module

    root, _, _ = phantom_luna
    monkeypatch.setattr("noduleflow.detect.models.load_part", lambda sub, part: DenseTissue())
    calls = []
    real = predictor_module.probability_peaks
    monkeypatch.setattr(predictor_module, "probability_peaks", lambda *a, **k: calls.append(1) or real(*a, **k))
    mining.mine_candidates(root, tmp_path / "run" / "segment", tmp_path / "run" / "mined.csv", progress=False)
    assert calls == [1]  # one scan, its peaks looked for once
