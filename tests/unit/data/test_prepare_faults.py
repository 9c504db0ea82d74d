"""`prepare` under faults: unreadable scans among good ones, two runs on one cache, a killed parent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from luna_phantoms import write_luna

from noduleflow.ct.io import read_volume
from noduleflow.data.cache import ScanCache
from noduleflow.data.prepare_cache import prepare
from noduleflow.errors import ScanError


def _prepare(root: Path, **kwargs):
    return prepare(root, workers=kwargs.pop("workers", 1), progress=False, **kwargs)


def _write_bad(root: Path, name: str, kind: str, where: float, data: bytes) -> Path:
    """A scan that is wrong in one way: garbage, a truncated or missing data file, a header line lost or mangled."""
    mhd = root / "subset0" / f"{name}.mhd"
    good = min(p for p in root.glob("subset0/*.mhd") if not p.name.startswith("bad"))
    lines = good.read_text().splitlines()
    raw = good.with_suffix(".raw").read_bytes()
    data_line = next(i for i, line in enumerate(lines) if line.startswith("ElementDataFile"))
    lines[data_line] = f"ElementDataFile = {name}.raw"
    if kind == "garbage":
        mhd.write_bytes(data)
        return mhd
    if kind == "truncated_raw":
        raw = raw[: int(where * len(raw))]
    elif kind == "missing_raw":
        raw = None
    elif kind == "drop_line":
        del lines[int(where * len(lines))]
    elif kind == "mangle_line":
        i = int(where * len(lines))
        lines[i] = lines[i].split("=")[0] + "= " + data.decode("latin-1")
    mhd.write_text("\n".join(lines) + "\n")
    if raw is not None:
        (root / "subset0" / f"{name}.raw").write_bytes(raw)
    return mhd


def _readable(path: Path) -> bool:
    """The oracle: does the reader take it? Any exception counts (prepare lists a reader's bug like a ScanError)."""
    try:
        read_volume(path)
        return True
    except Exception:  # any failure counts: a reader's bug must be listed too
        return False


@pytest.fixture(scope="module")
def prepared_luna(tmp_path_factory) -> dict:
    info = write_luna(tmp_path_factory.mktemp("faults") / "luna", n_scans=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _prepare(info["root"])
    return {"root": info["root"], "uids": info["uids"]}


bad_scans = st.tuples(
    st.sampled_from(["garbage", "truncated_raw", "missing_raw", "drop_line", "mangle_line"]),
    st.floats(0, 0.999),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(bad_scans, min_size=1, max_size=3))
def test_prepare_caches_every_readable_scan_and_names_each_unreadable_one(prepared_luna, plan):
    root = prepared_luna["root"]
    paths = [_write_bad(root, f"bad{i}", *spec) for i, spec in enumerate(plan)]
    try:
        unreadable = sorted(str(p.relative_to(root)) for p in paths if not _readable(p))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                summary = _prepare(root)
                error = None
            except ScanError as err:
                summary, error = None, err
        cache = ScanCache(root / ".noduleflow-cache")
        if unreadable:
            assert error is not None, plan
            assert error.message.count("could not be read") == 1
            for name in unreadable:
                assert name in error.message
            # one warning line per unreadable scan, naming it
            warned = [str(w.message) for w in caught if "skipped; the other scans are still prepared" in str(w.message)]
            assert sorted(Path(w.split(": ")[0]).relative_to(root).as_posix() for w in warned) == unreadable
            assert all("\n" not in w for w in warned)
        else:
            assert error is None and not summary.failed
        for uid in prepared_luna["uids"] + [p.name[:-4] for p in paths if str(p.relative_to(root)) not in unreadable]:
            assert cache.problem(uid) is None, uid
        for name in unreadable:  # nothing half-written for them
            assert not cache.entry_dir(Path(name).name[:-4]).exists()
        assert [p for p in cache.root.rglob("*") if ".tmp-" in p.name] == []
    finally:
        for i in range(len(plan)):
            for suffix in (".mhd", ".raw"):
                (root / "subset0" / f"bad{i}{suffix}").unlink(missing_ok=True)
            shutil.rmtree(ScanCache(root / ".noduleflow-cache").entry_dir(f"bad{i}"), ignore_errors=True)


def test_a_reader_crash_on_one_scan_is_listed_like_an_unreadable_scan(luna, monkeypatch):
    """Not only ScanError: whatever reading, resampling or masking one scan raises is that scan's failure."""
    import noduleflow.ct.io as ct_io

    root, uids = luna["root"], sorted(luna["uids"])
    real = ct_io.read_volume

    def read_volume(path):
        if uids[1] in str(path):
            raise RuntimeError("ITK ERROR: something inside the reader")
        return real(path)

    monkeypatch.setattr(ct_io, "read_volume", read_volume)
    with pytest.raises(ScanError) as err, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _prepare(root)
    assert f"1 scan(s) could not be read and are not cached: subset0/{uids[1]}.mhd" in err.value.message
    assert [str(w.message) for w in caught] == [
        f"{root / 'subset0' / uids[1]}.mhd: cannot be prepared (RuntimeError: ITK ERROR: something inside the reader) "
        "(skipped; the other scans are still prepared)"
    ]
    cache = ScanCache(root / ".noduleflow-cache")
    assert cache.series_uids() == (uids[0], uids[2])


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "noduleflow", "prepare", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow  # real processes: a CLI start and spawned workers cost seconds
def test_cli_with_workers_warns_per_bad_scan_caches_the_rest_and_exits_2(luna):
    root = luna["root"]
    _write_bad(root, "bad_garbage", "garbage", 0, b"not a header")
    _write_bad(root, "bad_short", "truncated_raw", 0.5, b"")
    _, err = _cli(str(root), "--workers", "2").communicate(timeout=120)
    lines = err.strip().splitlines()
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 2 and any("bad_garbage.mhd" in w for w in warned) and any("bad_short" in w for w in warned)
    assert lines[-1].startswith(
        f"error: {root}: 2 scan(s) could not be read and are not cached: "
        "subset0/bad_garbage.mhd, subset0/bad_short.mhd (prepared 3 scan(s)"
    )
    cache = ScanCache(root / ".noduleflow-cache")
    assert cache.series_uids() == tuple(sorted(luna["uids"]))
    for uid in luna["uids"]:
        np.testing.assert_array_equal(cache.open(uid).hu, read_volume(next(root.glob(f"subset*/{uid}.mhd"))).hu)
    mtimes = [(cache.entry_dir(uid) / "hu.npy").stat().st_mtime_ns for uid in luna["uids"]]
    with pytest.raises(ScanError, match="2 scan"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _prepare(root)  # still says so, without rebuilding the good ones
    assert [(cache.entry_dir(uid) / "hu.npy").stat().st_mtime_ns for uid in luna["uids"]] == mtimes


def test_a_writer_holding_an_entry_is_waited_for_and_its_temporaries_are_left_alone(luna):
    """A second process never deletes a live writer's temporary file: it waits on the entry's flock."""
    root, uid = luna["root"], sorted(luna["uids"])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = _prepare(root).cache
    (cache.entry_dir(uid) / "entry.json").unlink()  # so the second run must rebuild it
    live_temp = cache.entry_dir(uid) / f".hu.npy.tmp-{os.getpid()}"
    with cache.lock(uid):
        live_temp.write_bytes(b"half a scan")
        other = _cli(str(root), "--workers", "1")
        deadline = time.monotonic() + 60
        while not _waits_on_a_flock(other.pid):
            assert other.poll() is None and time.monotonic() < deadline, other.communicate()
            time.sleep(0.05)
        assert live_temp.read_bytes() == b"half a scan"  # blocked, and it has touched nothing
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert "1 built" in out and not live_temp.exists()  # once the lock is ours, only the dead leave temps
    assert cache.problem(uid) is None


@pytest.mark.slow  # real processes: a CLI start and spawned workers cost seconds
def test_two_prepare_runs_on_one_cache_both_succeed(luna):
    root = luna["root"]
    runs = [_cli(str(root), "--workers", "1") for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    cache = ScanCache(root / ".noduleflow-cache")
    for uid in luna["uids"]:
        assert cache.problem(uid, verify=True) is None
    assert [p for p in cache.root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".write-test")] == []


@pytest.mark.slow  # real processes: a CLI start and spawned workers cost seconds
def test_workers_exit_when_prepare_is_killed(luna):
    """kill -9 of a `prepare -j 2` leaves no worker behind (they used to hold ~370 MB until ended by hand)."""
    root = luna["root"]
    script = f"from noduleflow.data.prepare_cache import prepare\nprepare({str(root)!r}, workers=2, progress=False)"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10  # typically well under a second
        while (alive := [pid for pid in workers if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive == [], f"workers {alive} outlived their parent"
    finally:  # never leave a test's process behind
        for pid in [*workers, *_children(parent.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def _children(pid: int) -> list[int]:
    """Worker processes (multiprocessing spawn) whose parent is `pid`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _waits_on_a_flock(pid: int) -> bool:
    """True when /proc/locks shows `pid` blocked on a FLOCK (a line with '->')."""
    return any(
        "->" in line and "FLOCK" in line and line.split()[5] == str(pid)
        for line in Path("/proc/locks").read_text().splitlines()
    )
