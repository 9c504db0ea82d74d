"""`noduleflow prepare` end to end on a few tiny synthetic scans: the CLI, the cache, and a first batch."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from noduleflow.ct.io import read_volume
from noduleflow.data import CandidatePatches, ScanCache, load_index, make_loader
from noduleflow.synth import synthesize


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, scans=3, seed=0, size="small", scale=0.5, progress=False)
    return out


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "noduleflow", "prepare", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def prepared(synth_data) -> subprocess.CompletedProcess:
    return _cli(str(synth_data), "--workers", "2")


def test_prepare_cli_builds_every_entry_then_skips_them(synth_data, prepared):
    assert prepared.returncode == 0, prepared.stderr
    assert "3 built (0 of them rebuilt), 0 already cached" in prepared.stdout
    cache = ScanCache(synth_data / ".noduleflow-cache")
    scans = sorted(synth_data.glob("subset*/*.mhd"))
    assert cache.series_uids() == tuple(sorted(p.name[: -len(".mhd")] for p in scans))
    for path in scans:
        entry = cache.open(path.name[: -len(".mhd")])
        np.testing.assert_array_equal(entry.hu, read_volume(path).hu)
        assert entry.lung_mask().to_array().mean() > 0.03  # the phantoms have lungs, and the mask finds them
    again = _cli(str(synth_data), "--workers", "2")
    assert again.returncode == 0 and "0 built (0 of them rebuilt), 3 already cached" in again.stdout


def test_a_bad_flag_exits_2_with_one_line(synth_data, tmp_path):
    result = _cli(str(synth_data), "--cache", str(tmp_path / "cache"), "--spacing", "1,2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --spacing '1,2'")
    assert not (tmp_path / "cache").exists()


def test_a_script_without_a_main_guard_is_told_so(synth_data, tmp_path):
    """Workers are spawned and re-import the calling script: without the guard they die, and the error says why."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from noduleflow.data.prepare_cache import prepare\n"
        f"prepare({str(synth_data)!r}, cache={str(tmp_path / 'cache')!r}, workers=2, progress=False)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'if __name__ == "__main__":' in result.stderr.strip().splitlines()[-1]


def test_balanced_batches_of_synthetic_candidates_match_the_scans(synth_data, prepared):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # synth CSVs name only scans on disk
        index = load_index(synth_data)
    val = [uid for uid in index.series_uids if index.folds[uid] == 2]  # subset2's one scan held out
    train_uids = [uid for uid in index.series_uids if uid not in val]
    train = CandidatePatches(ScanCache(synth_data / ".noduleflow-cache"), index.candidates_of(train_uids))
    assert {c.series_uid for c in train.records} == set(train_uids) and len(val) == 1
    loader = make_loader(train, 16, workers=2, sampler=train.balanced_sampler(1, num_samples=64, seed=0))
    patches, labels, indices = next(iter(loader))
    assert patches.shape == (16, 1, 32, 48, 48) and labels.tolist() == [1, 0] * 8
    for row in range(4):  # the same voxels as cropping the scan file
        record = train.records[int(indices[row])]
        volume = read_volume(index.scans[record.series_uid])
        i0, r0, c0 = volume.xyz_to_irc(record.center_xyz) - (16, 24, 24)
        block = np.full((32, 48, 48), -1000, np.int16)
        src = volume.hu[max(i0, 0) : i0 + 32, max(r0, 0) : r0 + 48, max(c0, 0) : c0 + 48]
        block[
            max(-i0, 0) : max(-i0, 0) + src.shape[0],
            max(-r0, 0) : max(-r0, 0) + src.shape[1],
            max(-c0, 0) : max(-c0, 0) + src.shape[2],
        ] = src
        np.testing.assert_allclose(patches[row, 0].numpy(), np.clip(block, -1000, 1000) / 1000.0, atol=1e-6)
        assert record.is_nodule == bool(labels[row])
