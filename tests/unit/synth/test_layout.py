"""The files `synthesize` writes: LUNA16 names and columns, readable scans, coordinates that fit, same bytes per seed."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from noduleflow.ct import read_volume
from noduleflow.synth import layout, synthesize

UID = re.compile(r"^1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.6279\.6001\.[1-9]\d{20,29}$")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digests(out: Path) -> dict[str, str]:
    """SHA-256 of every LUNA16 file under out (scans and CSVs), keyed by relative path."""
    files = [*out.glob("subset*/*"), *out.glob("*.csv")]
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_csv_columns_are_exactly_luna16s(dataset):
    _, out = dataset
    expected = {
        "annotations.csv": ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
        "annotations_excluded.csv": ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
        "candidates.csv": ["seriesuid", "coordX", "coordY", "coordZ", "class"],
        "annotations_with_malignancy.csv": ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_bool"],
    }
    for name, columns in expected.items():
        with open(out / name, newline="") as f:
            assert next(csv.reader(f)) == columns, name


def test_scans_read_with_simpleitk_in_their_subsets(dataset):
    summary, out = dataset
    mhds = sorted(out.glob("subset*/*.mhd"))
    assert sorted(p.parent.name for p in mhds) == ["subset0", "subset0", "subset1"]  # 3 scans filled in order
    assert {p.stem for p in mhds} == set(summary.series_uids)
    for path in mhds:
        assert UID.match(path.stem), path.stem
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkInt16
        sx, sy, sz = image.GetSpacing()
        nx, ny, nz = image.GetSize()
        assert sx == sy and nx == ny and 96 <= nx <= 128 and 50 <= nz <= 70  # half of small: 192-256, 100-140
        assert (
            0.6 * 512 <= nx * sx <= 0.9 * 512 + 20
        )  # field of view (mm) of 0.6-0.9 mm pixels at 512, or just the chest


def test_every_coordinate_lies_inside_its_scan(dataset):
    _, out = dataset
    volumes = {p.stem: read_volume(p) for p in out.glob("subset*/*.mhd")}
    for name in ("annotations.csv", "annotations_excluded.csv", "candidates.csv"):
        rows = _rows(out / name)
        assert rows or name != "candidates.csv"
        for row in rows:
            volume = volumes[row["seriesuid"]]
            irc = volume.xyz_to_irc([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
            assert np.all((irc >= 0) & (irc < volume.shape)), (name, row)


def test_candidates_are_mostly_hard_negatives_with_hits_on_every_nodule(dataset):
    summary, out = dataset
    nodules = defaultdict(list)
    for row in _rows(out / "annotations.csv"):
        assert float(row["diameter_mm"]) >= 3.0
        nodules[row["seriesuid"]].append(
            (np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")]), float(row["diameter_mm"]))
        )
    assert sum(map(len, nodules.values())) == summary.nodules > 0
    hits = defaultdict(int)
    per_scan = defaultdict(int)
    for row in _rows(out / "candidates.csv"):
        p = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        near = [i for i, (c, d) in enumerate(nodules[row["seriesuid"]]) if np.linalg.norm(p - c) <= d / 2]
        if row["class"] == "1":
            assert near, f"class-1 candidate {row} is on no annotated nodule"
            for i in near:
                hits[(row["seriesuid"], i)] += 1
        else:
            assert row["class"] == "0" and not near, f"negative candidate {row} lies on a nodule"
            per_scan[row["seriesuid"]] += 1
    assert all(hits[(uid, i)] >= 1 for uid, found in nodules.items() for i in range(len(found)))
    assert min(per_scan[uid] for uid in summary.series_uids) >= 200
    assert summary.candidates - summary.positives >= 30 * summary.positives


def test_malignancy_csv_is_annotations_plus_mal_bool(dataset):
    summary, out = dataset
    annotations = _rows(out / "annotations.csv")
    malignancy = _rows(out / "annotations_with_malignancy.csv")
    assert [{k: r[k] for k in annotations[0]} for r in malignancy] == annotations
    assert {r["mal_bool"] for r in malignancy} <= {"0", "1"}
    assert sum(r["mal_bool"] == "1" for r in malignancy) == summary.malignant
    assert all(float(r["diameter_mm"]) < 3.0 for r in _rows(out / "annotations_excluded.csv"))


def test_same_seed_gives_the_same_bytes_with_any_number_of_workers(dataset, synth_args, tmp_path):
    _, out = dataset
    again = synthesize(tmp_path / "again", workers=2, **synth_args)
    assert again.written == 3
    first, second = _digests(out), _digests(tmp_path / "again")
    assert len(first) == 3 * 2 + 4 and first == second


def test_another_seed_gives_other_scans(dataset, synth_args, tmp_path):
    summary, out = dataset
    other = synthesize(tmp_path, **{**synth_args, "scans": 1, "subsets": 1, "seed": synth_args["seed"] + 1})
    assert set(other.series_uids).isdisjoint(summary.series_uids)
    raw = next(tmp_path.glob("subset0/*.raw")).read_bytes()
    assert all(raw != p.read_bytes() for p in out.glob("subset*/*.raw"))


def test_rerun_skips_identical_scans_repairs_damaged_ones_and_drops_extra_ones(tmp_path):
    args = dict(scans=2, seed=3, scale=0.4, workers=1, progress=False)
    first = synthesize(tmp_path, **args)
    before = _digests(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("subset*/*")}
    second = synthesize(tmp_path, **args)
    assert (second.written, second.skipped) == (0, 2)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("subset*/*")} == stamps
    raw = next(tmp_path.glob("subset1/*.raw"))
    data = bytearray(raw.read_bytes())
    data[len(data) // 2] ^= 0xFF
    raw.write_bytes(bytes(data))
    third = synthesize(tmp_path, **args)
    assert (third.written, third.skipped) == (1, 1) and _digests(tmp_path) == before
    fewer = synthesize(tmp_path, **{**args, "scans": 1})
    assert fewer.removed == 1 and [p.stem for p in tmp_path.glob("subset*/*.mhd")] == [first.series_uids[0]]
    assert {r["seriesuid"] for r in _rows(tmp_path / "candidates.csv")} == {first.series_uids[0]}


def test_an_interrupted_write_leaves_no_partial_scan(tmp_path, monkeypatch):
    def write_half_then_fail(volume, path):
        Path(path).with_suffix(".raw").write_bytes(volume.hu.tobytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "write_volume", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, scans=1, seed=0, scale=0.3, workers=1, progress=False)
    assert not list(tmp_path.glob("subset*/*")) and not list((tmp_path / layout.RECORDS).glob("tmp-*"))
    monkeypatch.undo()
    summary = synthesize(tmp_path, scans=1, seed=0, scale=0.3, workers=1, progress=False)
    assert summary.written == 1 and len(list(tmp_path.glob("subset0/*.mhd"))) == 1
