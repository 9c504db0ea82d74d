"""The cache is trusted only when it is right: damaged, stale or oddly named entries, tried at random.

Each example damages one prepared entry (or its source scan) in one or two ways, then checks the two
promises: opening it for training raises `CacheError` (never a numpy/zip/json error, never wrong
voxels in silence), and a plain `prepare` leaves an entry equal to a fresh build of the scan.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from luna_phantoms import phantom, write_luna

from noduleflow.ct import CtVolume, write_volume
from noduleflow.ct.io import read_volume
from noduleflow.ct.lungmask import lung_mask
from noduleflow.data import CandidatePatches, SegmentationCrops, load_index
from noduleflow.data.cache import ScanCache
from noduleflow.data.prepare_cache import prepare
from noduleflow.errors import CacheError
from noduleflow.files import safe_name

FILES = ("hu.npy", "lung_mask.npz", "entry.json")


def _prepare(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(root, workers=1, progress=False)


@pytest.fixture(scope="module")
def one_scan(tmp_path_factory) -> dict:
    info = write_luna(tmp_path_factory.mktemp("trust") / "luna", n_scans=1)
    uid = info["uids"][0]
    _prepare(info["root"])
    return {"root": info["root"], "uid": uid, "mhd": info["root"] / "subset0" / f"{uid}.mhd"}


_REFS: dict[tuple, tuple] = {}


def _reference(scan: dict) -> tuple:
    """(hu, mask, origin) of a fresh build of the scan as it is on disk now (cached by the raw file's stat)."""
    raw = scan["mhd"].with_suffix(".raw")
    stamp = (raw.stat().st_size, raw.stat().st_mtime_ns, scan["mhd"].stat().st_mtime_ns)
    if stamp not in _REFS:
        volume = read_volume(scan["mhd"])
        _REFS[stamp] = (volume.hu.copy(), lung_mask(volume), volume.origin_xyz.copy())
    return _REFS[stamp]


def _read(path: Path):
    """A file's bytes (parsed, for .json), or None when it is not a readable regular file (a FIFO would block)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_bytes()) if path.suffix == ".json" else path.read_bytes()
    except (OSError, ValueError, RecursionError):
        return None


def _meaning(scan: dict, entry: Path) -> tuple:
    """What the entry and its source say: data files' bytes, entry.json parsed, the source files' stats."""
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in (scan["mhd"], scan["mhd"].with_suffix(".raw"))]
    return (*(_read(entry / name) for name in FILES), stats)


def _bump_mtime(path: Path, ns: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + ns))


# one damage: (kind, file, a number in [0, 1) that picks where, a byte or bytes)
_byte = st.integers(1, 255).map(lambda b: bytes([b]))
damages = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 0.999), st.just(b"")),
    st.tuples(st.just("flip"), st.sampled_from(FILES), st.floats(0, 0.999), _byte),
    st.tuples(st.just("garbage"), st.sampled_from(FILES), st.just(0.0), st.binary(max_size=300)),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.just(0.0), st.just(b"")),
    st.tuples(st.just("folder"), st.sampled_from(FILES), st.just(0.0), st.just(b"")),
    st.tuples(st.just("fifo"), st.sampled_from(FILES), st.just(0.0), st.just(b"")),
    st.tuples(st.just("other_voxels"), st.just("hu.npy"), st.floats(0, 0.999), _byte),
    st.tuples(st.just("garbage"), st.just("entry.json"), st.just(0.0), st.just(b"[" * 100_000)),  # deep JSON
    st.tuples(
        st.just("edit_json"),
        st.sampled_from(["shape", "origin_xyz", "series_uid", "key", "files"]),
        st.just(0.0),
        st.just(b""),
    ),
    st.tuples(st.just("touch_source"), st.sampled_from(["mhd", "raw"]), st.floats(0, 0.999), st.just(b"")),
    st.tuples(st.just("rewrite_source"), st.just("raw"), st.floats(0, 0.999), _byte),
)


def _damage(scan: dict, entry: Path, kind: str, name: str, where: float, data: bytes) -> None:
    path = entry / name
    if kind in ("touch_source", "rewrite_source"):
        source = scan["mhd"] if name == "mhd" else scan["mhd"].with_suffix(".raw")
        if kind == "rewrite_source":
            with open(source, "r+b") as f:  # one voxel byte changes, the size does not
                f.seek(int(where * source.stat().st_size))
                old = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([old[0] ^ data[0]]))
        _bump_mtime(source, 1 + int(where * 1e6))  # a file system with coarse mtimes still sees it
    elif kind == "edit_json":
        manifest = _read(entry / "entry.json")  # valid JSON that lies about one field
        if isinstance(manifest, dict):
            manifest[name] = {
                "shape": [1, 2, 3],
                "origin_xyz": [0, 0, 0],
                "series_uid": "1.2.3",
                "key": "0" * 20,
                "files": {},
            }[name]
            (entry / "entry.json").write_text(json.dumps(manifest))
    elif not path.is_file():
        return  # a second damage on a file the first removed
    elif kind == "truncate":
        os.truncate(path, int(where * path.stat().st_size))
    elif kind == "flip":
        # hu.npy: within its header (its voxels are `prepare --verify`'s job); other files: anywhere
        span = path.stat().st_size
        if name == "hu.npy":
            try:
                span = _read(entry / "entry.json")["files"]["hu.npy"]["header_bytes"]
            except (KeyError, TypeError):
                pass  # entry.json is already broken: flip anywhere
        with open(path, "r+b") as f:
            f.seek(int(where * min(span, path.stat().st_size)))
            old = f.read(1)
            if old:
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([old[0] ^ data[0]]))
    elif kind == "garbage":
        path.write_bytes(data)
    elif kind == "delete":
        path.unlink()
    elif kind == "other_voxels":  # a valid .npy of the same shape: another scan's
        hu = _reference(scan)[0]
        np.save(path, np.roll(hu, 1 + int(where * 1000), axis=2) + np.int16(data[0]))
    elif kind == "folder":  # a folder where the file belongs
        path.unlink()
        (path / "x").mkdir(parents=True)
    elif kind == "fifo":  # reading it would block: never opened
        path.unlink()
        os.mkfifo(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(damages, min_size=1, max_size=2))
def test_a_damaged_or_stale_entry_is_refused_for_training_and_rebuilt_by_prepare(one_scan, plan):
    root, uid = one_scan["root"], one_scan["uid"]
    cache = ScanCache(root / ".noduleflow-cache")
    entry = cache.entry_dir(uid)
    if cache.problem(uid) is not None:  # a failed example left it damaged: start clean
        _prepare(root)
    before = _meaning(one_scan, entry)
    for damage in plan:
        _damage(one_scan, entry, *damage)
    hu_ref, mask_ref, origin_ref = _reference(one_scan)
    try:
        opened = cache.open(uid)
        mask = opened.lung_mask().to_array()
    except CacheError as err:
        assert "noduleflow prepare" in err.message
    else:  # flips that cancel, or one in entry.json's whitespace: nothing changed, and it must read right
        assert _meaning(one_scan, entry) == before, plan
        np.testing.assert_array_equal(opened.hu, hu_ref)
        np.testing.assert_array_equal(mask, mask_ref)

    summary = _prepare(root)
    assert summary.failed == {} and summary.built + summary.skipped == [uid]
    opened = cache.open(uid)
    np.testing.assert_array_equal(opened.hu, hu_ref)
    np.testing.assert_array_equal(opened.lung_mask().to_array(), mask_ref)
    np.testing.assert_array_equal(opened.origin_xyz, origin_ref)
    assert [p.name for p in entry.iterdir() if ".tmp-" in p.name] == []


def test_a_stale_entry_stops_training_with_the_fix(luna):
    root, uid = luna["root"], luna["uids"][0]
    _prepare(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CSVs' rows of a series not on disk
        index = load_index(root)
    raw = next(root.glob(f"subset*/{uid}.raw"))
    _bump_mtime(raw, 10**6)
    with pytest.raises(CacheError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CandidatePatches(ScanCache(root / ".noduleflow-cache"), index.candidates)
    assert f"series {uid} (stale: its scan file {raw} changed since `prepare`" in err.value.message
    assert "Run `noduleflow prepare DATA`" in err.value.message


@pytest.mark.parametrize("damage", ["mask_garbage", "npy_header", "stale"])
@pytest.mark.parametrize("dataset", ["candidates", "segmentation"])
def test_training_datasets_refuse_a_damaged_or_stale_entry(luna, damage, dataset):
    """What `train classify` and `train segment` build first: a CacheError with the fix, not a numpy/zip crash."""
    root, uid = luna["root"], luna["uids"][1]
    cache = _prepare(root).cache
    entry = cache.entry_dir(uid)
    if damage == "mask_garbage":
        (entry / "lung_mask.npz").write_bytes(b"PK" + bytes(len((entry / "lung_mask.npz").read_bytes()) - 2))
    elif damage == "npy_header":
        with open(entry / "hu.npy", "r+b") as f:  # shape (40, 64, 64) -> (40, 64, 84), same size
            head = f.read(128)
            f.seek(0)
            f.write(head.replace(b"64)", b"84)"))
    else:
        _bump_mtime(next(root.glob(f"subset*/{uid}.mhd")), 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = load_index(root)
    with pytest.raises(CacheError, match=f"series {uid} .*Run `noduleflow prepare DATA`"):
        if dataset == "candidates":
            CandidatePatches(ScanCache(cache.root), index.candidates)
        else:
            SegmentationCrops(ScanCache(cache.root), index.nodules, samples_per_epoch=4)[3]


def test_another_scans_voxels_copied_over_an_entry_are_caught_without_verify(luna):
    """Same shape, same header, same size: only the sampled blocks tell the files apart."""
    root, (a, b, _) = luna["root"], luna["uids"]
    cache = _prepare(root).cache
    shutil.copyfile(cache.entry_dir(b) / "hu.npy", cache.entry_dir(a) / "hu.npy")
    why = "corrupt: hu.npy holds other voxels than were written (sampled blocks differ)"
    assert cache.problem(a) == why
    with pytest.raises(CacheError, match=f"series {a} .*Run `noduleflow prepare DATA`"):
        cache.open(a)
    assert _prepare(root).rebuilt == {a: why}
    np.testing.assert_array_equal(cache.open(a).hu, luna["volumes"][0].hu)


def test_a_mask_damaged_after_open_is_a_cache_error(luna_prepared, tmp_path):
    """An entry opened before its mask was damaged (a long training) still never crashes in numpy/zipfile."""
    cache = ScanCache(luna_prepared["cache"].root)
    scan = cache.open(luna_prepared["uids"][0])
    backup = (scan.path / "lung_mask.npz").read_bytes()
    try:
        (scan.path / "lung_mask.npz").write_bytes(backup[:100])
        with pytest.raises(CacheError, match=r"lung mask of series .* unreadable"):
            scan.lung_mask()
    finally:
        (scan.path / "lung_mask.npz").write_bytes(backup)
    assert scan.lung_mask().to_array().sum() > 10_000


def test_an_entry_of_an_older_layout_is_rebuilt(luna):
    root, uid = luna["root"], luna["uids"][0]
    cache = _prepare(root).cache
    manifest_path = cache.entry_dir(uid) / "entry.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["format"], manifest["checksum"]  # what noduleflow wrote before these checks
    manifest_path.write_text(json.dumps(manifest))
    assert cache.problem(uid) == "stale: written by an older noduleflow"
    with pytest.raises(CacheError, match=r"older noduleflow\)\. Run `noduleflow prepare DATA`"):
        cache.open(uid)
    assert _prepare(root).rebuilt == {uid: "stale: written by an older noduleflow"}


@settings(max_examples=25, deadline=None)
@given(
    uid=st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s)
    | st.sampled_from(["..", ".", "/", "a/../..", "~"])
)
def test_any_series_uid_names_an_entry_inside_the_cache(tmp_path_factory, uid):
    root = tmp_path_factory.mktemp("names")
    cache = ScanCache(root / "cache")
    volume = CtVolume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), (1, 2, 3), (0.5, 0.5, 2), np.eye(3))
    cache.write(volume, volume.hu > 60, "k" * 20, None, series_uid=uid)
    entry = cache.entry_dir(uid)
    assert entry.parent == cache.dir and entry.name == safe_name(uid)
    assert [p.name for p in (root / "cache").iterdir()] == [cache.dir.name]  # nothing beside the params folder
    assert cache.series_uids() == (uid,)
    np.testing.assert_array_equal(cache.open(uid).hu, volume.hu)


def test_a_scan_file_named_dot_dot_dot_mhd_gets_an_entry_inside_the_cache(luna):
    """`...mhd` has the uid '..': its entry used to land in the cache root itself."""
    root = luna["root"]
    source = phantom(7)
    write_volume(source, root / "subset0" / "...mhd")
    summary = _prepare(root)
    assert ".." in summary.built
    cache = summary.cache
    assert cache.entry_dir("..") == cache.dir / safe_name("..") and ".." in cache.series_uids()
    assert sorted(p.name for p in cache.root.iterdir()) == [cache.dir.name]
    np.testing.assert_array_equal(cache.open("..").hu, source.hu)
