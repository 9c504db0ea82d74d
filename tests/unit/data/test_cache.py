"""The scan cache: round trip, resume, atomic writes, and damaged or unwritable caches."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from noduleflow.ct.io import read_volume
from noduleflow.ct.lungmask import lung_mask
from noduleflow.data import cache as cache_mod
from noduleflow.data import cache_files
from noduleflow.data.cache import LungMask, ScanCache
from noduleflow.data.prepare_cache import parse_spacing, prepare
from noduleflow.errors import CacheError, ConfigError


def _prepare(root: Path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(root, workers=1, progress=False, **kwargs)


def _scan_path(root: Path, uid: str) -> Path:
    return next(root.glob(f"subset*/{uid}.mhd"))


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_round_trip_memmap_geometry_and_mask_equal_the_source(luna_prepared):
    cache, root = luna_prepared["cache"], luna_prepared["root"]
    assert cache.series_uids() == tuple(sorted(luna_prepared["uids"]))
    assert cache.dir == root / ".noduleflow-cache" / "v1-native"
    for uid in luna_prepared["uids"]:
        source, entry = read_volume(_scan_path(root, uid)), cache.open(uid)
        assert isinstance(entry.hu.base, np.memmap) and entry.hu.dtype == np.int16 and not entry.hu.flags.writeable
        np.testing.assert_array_equal(entry.hu, source.hu)
        np.testing.assert_array_equal(entry.origin_xyz, source.origin_xyz)
        np.testing.assert_array_equal(entry.spacing_xyz, source.spacing_xyz)
        np.testing.assert_array_equal(entry.direction, source.direction)
        mask = entry.lung_mask()
        assert mask.to_array().sum() > 10_000
        np.testing.assert_array_equal(mask.to_array(), lung_mask(source))
    summary = luna_prepared["summary"]
    assert summary.scan_bytes == sum(read_volume(_scan_path(root, u)).hu.nbytes for u in luna_prepared["uids"])
    # tiny 330 KB scans: npy headers, json and the deflated mask add under 1 %
    assert summary.scan_bytes < summary.cache_bytes < 1.01 * summary.scan_bytes


def test_second_run_skips_complete_entries_and_rebuilds_only_an_incomplete_one(luna):
    root, uids = luna["root"], sorted(luna["uids"])
    first = _prepare(root)
    assert sorted(first.built) == uids and first.skipped == []
    cache = first.cache
    hu_mtimes = {u: (cache.entry_dir(u) / "hu.npy").stat().st_mtime_ns for u in uids}
    assert _prepare(root).built == []
    (cache.entry_dir(uids[1]) / "entry.json").unlink()  # as if killed before the manifest landed
    again = _prepare(root)
    assert again.built == [uids[1]] and sorted(again.skipped) == [uids[0], uids[2]] and again.rebuilt == {}
    for u in (uids[0], uids[2]):
        assert (cache.entry_dir(u) / "hu.npy").stat().st_mtime_ns == hu_mtimes[u]


def test_a_changed_source_file_makes_its_entry_stale(luna):
    root, uid = luna["root"], luna["uids"][0]
    _prepare(root)
    raw = _scan_path(root, uid).with_suffix(".raw")
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    again = _prepare(root)
    assert again.built == [uid] and again.rebuilt == {uid: "stale"}


def test_truncated_npy_is_detected_and_rebuilt(luna):
    root, uid = luna["root"], luna["uids"][0]
    cache = _prepare(root).cache
    hu = cache.entry_dir(uid) / "hu.npy"
    with open(hu, "r+b") as f:
        f.truncate(hu.stat().st_size // 2)
    assert cache.problem(uid).startswith("corrupt: hu.npy has")
    with pytest.raises(CacheError, match=r"no usable entry .* Run `noduleflow prepare"):
        ScanCache(cache.root).open(uid)
    again = _prepare(root)
    assert again.built == [uid] and again.rebuilt[uid].startswith("corrupt")
    np.testing.assert_array_equal(cache.open(uid).hu, read_volume(_scan_path(root, uid)).hu)


def test_verify_catches_a_flipped_byte_that_sizes_cannot(luna):
    root, uid = luna["root"], luna["uids"][1]
    cache = _prepare(root).cache
    with open(cache.entry_dir(uid) / "hu.npy", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert _prepare(root).built == []
    again = _prepare(root, verify=True)
    assert again.rebuilt == {uid: "corrupt: hu.npy fails its checksum"}
    np.testing.assert_array_equal(cache.open(uid).hu, read_volume(_scan_path(root, uid)).hu)


def test_full_disk_mid_write_raises_cache_error_leaves_no_partial_entry_and_next_run_rebuilds(luna, monkeypatch):
    root, uids = luna["root"], sorted(luna["uids"])
    real_write, calls = cache_files.HashingWriter.write, {"n": 0}

    def write(self, data):
        calls["n"] += memoryview(data).nbytes > 100_000
        if calls["n"] == 2:  # the voxels of the second scan's hu.npy, after its header
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(cache_files.HashingWriter, "write", write)
    with pytest.raises(CacheError, match="the disk is full") as err:
        _prepare(root)
    assert "Free disk space" in err.value.message
    cache = ScanCache(root / ".noduleflow-cache")
    assert _temp_files(cache.root) == []
    assert cache.series_uids() == (uids[0],)  # the first entry finished, the second is not complete
    assert cache.problem(uids[1]) == "missing"
    monkeypatch.setattr(cache_files.HashingWriter, "write", real_write)
    again = _prepare(root)
    assert again.skipped == [uids[0]] and sorted(again.built) == uids[1:]
    np.testing.assert_array_equal(cache.open(uids[1]).hu, read_volume(_scan_path(root, uids[1])).hu)


def test_interrupt_while_writing_the_manifest_leaves_an_incomplete_entry(luna, monkeypatch):
    root, uid = luna["root"], sorted(luna["uids"])[0]
    real = cache_mod.atomic_write_hashed

    def atomic_write_hashed(path, write):
        if path.name == "entry.json":
            raise KeyboardInterrupt
        return real(path, write)

    monkeypatch.setattr(cache_mod, "atomic_write_hashed", atomic_write_hashed)
    with pytest.raises(KeyboardInterrupt):
        _prepare(root)
    cache = ScanCache(root / ".noduleflow-cache")
    assert (cache.entry_dir(uid) / "hu.npy").is_file() and cache.problem(uid) == "missing"
    monkeypatch.setattr(cache_mod, "atomic_write_hashed", real)
    assert uid in _prepare(root).built


def test_unwritable_cache_folder_is_a_cache_error(luna, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="cannot be written") as err:
        _prepare(luna["root"], cache=blocker / "cache")
    assert "--cache" in err.value.message
    assert not (luna["root"] / ".noduleflow-cache").exists()


def test_spacing_gets_its_own_folder_and_resampled_entries(luna):
    root, uid = luna["root"], luna["uids"][0]
    summary = _prepare(root, spacing_xyz=(1.6, 1.6, 2.0))
    assert summary.cache.dir.name == "v1-1.6x1.6x2mm"
    entry = summary.cache.open(uid)
    assert entry.shape == (40, 32, 32) and entry.spacing_xyz.tolist() == [1.6, 1.6, 2.0]
    assert not ScanCache(summary.cache.root).dir.exists()  # the native cache was not touched
    assert parse_spacing("0.7, 0.7,1.25") == (0.7, 0.7, 1.25) and parse_spacing(None) is None
    with pytest.raises(ConfigError, match="--spacing '1,-2,3'"):
        parse_spacing("1,-2,3")


@pytest.mark.parametrize("width", [1, 8, 13])
def test_lung_mask_packs_and_unpacks_exactly(width):
    rng = np.random.default_rng(width)
    mask = np.zeros((6, 9, 20), dtype=bool)
    mask[1:5, 2:8, 3 : 3 + width] = rng.random((4, 6, width)) < 0.5
    packed = LungMask.from_array(mask)
    np.testing.assert_array_equal(packed.to_array(), mask)
    points = np.argwhere(np.ones_like(mask))
    np.testing.assert_array_equal(packed.contains(points), mask.ravel())
    empty = LungMask.from_array(np.zeros((3, 4, 5), dtype=bool))
    assert empty.empty and not empty.to_array().any() and not empty.contains([[1, 1, 1]]).any()
