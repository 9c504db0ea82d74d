"""Patches per second: noduleflow's cached loader vs. reading every scan, vs. the book's diskcache memoize.

Run: .venv/bin/python bench/loader.py   (2-3 minutes on 2 busy cores; the synthetic scans are kept in
$NODULEFLOW_BENCH_DIR, default /tmp/noduleflow-bench, for the next run)

One run, the same synthetic scans (`noduleflow.synth`, 8 small scans), the same candidate patches
(32 x 48 x 48 voxels, HU clipped to [-1000, 1000] and scaled to [-1, 1], checked equal across the
three), the same DataLoader settings (batch 32, 2 worker processes, persistent), three ways to get
a patch:

- noduleflow: `CandidatePatches` + `make_loader` on the memory-mapped cache of `noduleflow prepare`.
- naive:      open the patch's scan with SimpleITK and crop, for every sample.
- diskcache:  "Deep Learning with PyTorch" p2ch11: `getCtRawCandidate` memoized on disk by a diskcache
              `FanoutCache` (float32 crops), filled in series order first as the book's prepcache does.

Warm rates are the best of two passes after a warm-up pass (page cache and workers started).
Each approach runs in its own fresh process, so the peak RSS printed (VmHWM) is its own: the main
process and its largest DataLoader worker. The last two lines are the ratios.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

SCANS, SEED, BATCH, WORKERS = 8, 0, 32, 2
PATCH = (32, 48, 48)
POOL = 384  # distinct candidates; passes draw from them in random order, as epochs do
N_FAST, N_NAIVE = 3072, 96  # patches per timed pass: noduleflow and diskcache; the naive baseline


def main() -> None:
    import warnings

    from noduleflow.data import load_index, prepare

    data = _synthetic_data()
    started = time.perf_counter()
    summary = prepare(data, workers=WORKERS, progress=False)
    print(
        f"data: {data} ({SCANS} scans), cache ready in {time.perf_counter() - started:.1f} s "
        f"({len(summary.built)} built, {len(summary.skipped)} already cached)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = load_index(data)
    rng = np.random.default_rng(SEED)
    distinct = rng.choice(len(index.candidates), min(POOL, len(index.candidates)), replace=False)
    samples = [
        (c.series_uid, c.center_xyz, int(c.is_nodule))
        for c in (index.candidates[i] for i in rng.choice(distinct, N_FAST))
    ]
    scans = {uid: str(path) for uid, path in index.scans.items()}
    _check_same_patches(summary.cache.root, scans, samples[:4])

    results = {}
    for name, args in [
        ("noduleflow", (str(summary.cache.root), samples)),
        ("naive", (scans, samples[:N_NAIVE])),
        ("diskcache", (scans, samples)),
    ]:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # a fresh process: its own peak RSS
            results[name] = pool.submit(_measure, name, *args).result()
        rate, rss_main, rss_worker, note = results[name]
        print(
            f"{name:>10}: {rate:9.1f} patches/s   peak RSS: main {rss_main:4.0f} MB, each of {WORKERS} workers "
            f"<= {rss_worker:4.0f} MB{note}"
        )

    int16_bytes, cache_bytes = summary.scan_bytes, summary.cache_bytes
    print(
        f"cache size: {cache_bytes / 1e6:.1f} MB = {cache_bytes / int16_bytes:.4f}x the int16 scans ({int16_bytes / 1e6:.1f} MB)"
    )
    print(
        f"this bench process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (getrusage)"
    )
    fast, naive, dc = (results[k][0] for k in ("noduleflow", "naive", "diskcache"))
    print(f"ratio_vs_naive {fast / naive:.1f}")
    print(f"ratio_vs_diskcache {fast / dc:.1f}")


def _synthetic_data() -> Path:
    """8 small synthetic scans in the LUNA16 layout, generated once and kept for later runs."""
    folder = (
        Path(os.environ.get("NODULEFLOW_BENCH_DIR", Path(tempfile.gettempdir()) / "noduleflow-bench"))
        / f"loader-{SCANS}-{SEED}"
    )
    done = folder / ".complete"
    if not done.exists():
        from noduleflow.synth import synthesize

        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        synthesize(folder, scans=SCANS, seed=SEED, size="small")
        done.touch()
        print(f"synthesized {SCANS} scans in {time.perf_counter() - started:.1f} s")
    return folder


def _measure(name: str, *args) -> tuple:
    """(patches/s, peak RSS of this process in MB, of its largest worker in MB, note) for one approach.

    Peaks come from /proc VmHWM: getrusage's ru_maxrss survives exec, so a spawned process would
    report its parent's peak whenever that is larger.
    """
    import torch

    torch.set_num_threads(1)
    if name == "noduleflow":
        rate, note = _noduleflow_rate(*args), ""
    elif name == "naive":
        rate, note = _timed(_loader(_NaivePatches(*args))), ""
    else:
        rate, note = _diskcache_rate(*args)
    return (rate, _hwm_mb("self"), max(_WORKER_HWM_MB), note)


def _noduleflow_rate(cache_root: str, samples: list) -> float:
    from noduleflow.data import Candidate, CandidatePatches, ScanCache, make_loader

    candidates = [Candidate(uid, xyz, bool(label)) for uid, xyz, label in samples]
    dataset = CandidatePatches(ScanCache(cache_root), candidates, size=PATCH)
    loader = make_loader(dataset, BATCH, workers=WORKERS)
    _timed(loader)  # first pass: page cache and workers warm
    return max(_timed(loader), _timed(loader))  # best of two warm passes, as for diskcache


def _diskcache_rate(scans: dict, samples: list) -> tuple[float, str]:
    folder = tempfile.mkdtemp(prefix="noduleflow-bench-diskcache-")
    try:
        started = time.perf_counter()
        _timed(_loader(_DiskcachePatches(scans, sorted(set(samples)), folder)))  # the book's prepcache: by series
        cold = time.perf_counter() - started
        loader = _loader(_DiskcachePatches(scans, samples, folder))  # training order, every crop cached
        rate = max(_timed(loader), _timed(loader))  # best of two warm passes
        del loader
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        return rate, f"   (filling it took {cold:.1f} s; diskcache holds {size / 1e6:.0f} MB)"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _loader(dataset):
    """The DataLoader settings every approach shares."""
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True)


def _timed(loader) -> float:
    """Patches per second over one pass, timed from the first batch on (worker start-up excluded)."""
    batches = iter(loader)
    next(batches)
    started, count = time.perf_counter(), 0
    for patches, *_ in batches:
        count += len(patches)
    rate = count / (time.perf_counter() - started)
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()  # the live (persistent) workers
    _WORKER_HWM_MB.extend(_hwm_mb(pid) for pid in children)
    return rate


_WORKER_HWM_MB = [0.0]


def _hwm_mb(pid: str) -> float:
    """Peak resident set of a process in MB (VmHWM in /proc/<pid>/status), 0 if it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


def _check_same_patches(cache_root: Path, scans: dict, samples: list) -> None:
    """All three approaches must deliver the same tensors, or the comparison means nothing."""
    import torch

    from noduleflow.data import Candidate, CandidatePatches, ScanCache

    ours = CandidatePatches(
        ScanCache(cache_root), [Candidate(u, x, bool(label)) for u, x, label in samples], size=PATCH
    )
    folder = tempfile.mkdtemp(prefix="noduleflow-bench-check-")
    try:
        for i, (naive, book) in enumerate(
            zip(_NaivePatches(scans, samples), _DiskcachePatches(scans, samples, folder))
        ):
            if not (torch.equal(ours[i][0], naive[0]) and torch.allclose(ours[i][0], book[0], rtol=0, atol=1e-6)):
                sys.exit(f"patch {i} differs between the approaches: the benchmark would compare different work")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_scan(path: str):
    """SimpleITK read -> (int16 (I, R, C), origin, spacing, direction)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(path)
    hu = sitk.GetArrayFromImage(image).astype(np.int16, copy=False)
    return hu, np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection()).reshape(3, 3)


def _patch(hu: np.ndarray, geometry: tuple, xyz) -> np.ndarray:
    from noduleflow.ct.geometry import xyz_to_irc
    from noduleflow.data.patches import crop

    return crop(hu, xyz_to_irc(xyz, *geometry), PATCH)


class _NaivePatches:
    """Every sample reads its whole scan with SimpleITK, then crops."""

    def __init__(self, scans: dict, samples: list):
        self.scans, self.samples = scans, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        from noduleflow.data.patches import hu_to_unit

        uid, xyz, label = self.samples[i]
        hu, *geometry = _read_scan(self.scans[uid])
        return torch.from_numpy(hu_to_unit(_patch(hu, geometry, xyz)))[None], torch.tensor(label)


class _DiskcachePatches:
    """The book's LunaDataset (p2ch11/dsets.py): `getCt` keeps one whole scan (lru_cache), and
    `getCtRawCandidate` is memoized on disk by a diskcache FanoutCache.

    The memoized function is built in each process on first use (a diskcache wrapper cannot be
    pickled to a worker); all processes share one cache folder, as the book's workers do.
    """

    def __init__(self, scans: dict, samples: list, folder: str):
        self.scans, self.samples, self.folder = scans, samples, folder
        self._get = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_get": None}

    def __getitem__(self, i: int):
        import diskcache
        import torch

        if self._get is None:
            raw_cache = diskcache.FanoutCache(
                self.folder, shards=64, timeout=1, size_limit=3e11
            )  # the book's util/disk.py
            self._get = raw_cache.memoize(name="getCtRawCandidate", typed=True)(
                functools.partial(_book_raw_candidate, self.scans)
            )
        uid, xyz, label = self.samples[i]
        candidate_a, center_irc = self._get(uid, tuple(xyz), PATCH)
        candidate_t = torch.from_numpy(candidate_a).to(torch.float32).unsqueeze(0)
        candidate_t = (
            candidate_t / 1000.0
        )  # the one step the book leaves to its model: scale to [-1, 1] like the others
        pos_t = torch.tensor([not label, label], dtype=torch.long)
        return candidate_t, pos_t, uid, torch.tensor(center_irc)


def _book_raw_candidate(scans: dict, uid: str, xyz: tuple, width_irc: tuple) -> tuple[np.ndarray, tuple]:
    """The book's getCtRawCandidate: (float32 crop of the HU-clipped scan, centre voxel)."""
    from noduleflow.ct.geometry import xyz_to_irc
    from noduleflow.data.patches import crop

    hu, geometry = _book_ct(scans[uid])
    center_irc = xyz_to_irc(xyz, *geometry)
    return crop(hu, center_irc, width_irc), tuple(center_irc.tolist())


@functools.lru_cache(1, typed=True)
def _book_ct(path: str):
    """The book's getCt / Ct: the whole scan as float32, clipped to [-1000, 1000] once at load."""
    hu, *geometry = _read_scan(path)
    return np.clip(hu.astype(np.float32), -1000, 1000), tuple(geometry)


if __name__ == "__main__":
    main()
