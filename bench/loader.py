"""Patches per second of the classifier's training data: noduleflow's loader vs. reading every scan, vs. the book's diskcache.

Run: .venv/bin/python bench/loader.py [--samples 3072]   (5-10 minutes on 2 busy cores; the synthetic scans
are kept in $NODULEFLOW_BENCH_DIR, default /tmp/noduleflow-bench, for the next run)

What is measured is what the detector recipe's classifier training reads (`configs/detector.yaml`'s classify part
through `train.tasks.build_task`): candidate patches spanning `classify.patch_mm` (24 mm a side, resampled to the
model's 16 x 32 x 32 voxels), HU clipped to [-1000, 1000] and scaled to [-1, 1], augmented (flips, rotation,
zoom, shift, noise: the task's `Augment`), drawn by the balanced sampler with mined candidates (a CSV of
extra candidates written next to the scans) weighing `classify.extra_weight`. One run, the same synthetic scans
(`noduleflow.synth`, 8 small scans), the same samples in the same order (un-augmented patches checked equal
across the three), the same DataLoader settings (batch 32, 2 worker processes), three ways to get them:

- noduleflow: the task's own train loader on the memory-mapped cache of `noduleflow prepare`: each batch's
              source blocks read at once (`__getitems__`) and every patch cut and augmented in one resample
              (the mm scaling and the augmentation's affine composed; noise read from a bank of normals),
              straight into the shared memory that takes it to the main process, which receives one
              shared-memory descriptor a batch.
- naive:      open the patch's scan with SimpleITK, resample the mm patch and augment it, for every sample.
- diskcache:  "Deep Learning with PyTorch" p2ch11-12: `getCtRawCandidate` (here the mm patch) memoized on disk
              by a diskcache `FanoutCache`, filled in series order first as the book's prepcache does, and
              each sample augmented on its own with a 3D `affine_grid` / `grid_sample` (getCtAugmentedCandidate).

Warm rates are the best of two passes after a warm-up pass (page cache warm; the task's loader starts its
workers each pass, as training does each epoch, and the timing starts at the first batch).
Each approach runs in its own fresh process, so the peak RSS printed (VmHWM) is its own: the main
process and its largest DataLoader worker. The last two lines are the ratios.
"""

from __future__ import annotations

import argparse
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
N_FAST, N_NAIVE = 3072, 96  # patches per timed pass: noduleflow and diskcache; the naive baseline
MINED_EVERY = 25  # one mined candidate per this many candidates.csv rows (the recipe mines ~4%)


def main() -> None:
    import warnings

    from noduleflow.data import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=N_FAST, help="patches per timed pass (fewer: a quick look)")
    samples_per_pass = parser.parse_args().samples
    data = _synthetic_data()
    started = time.perf_counter()
    summary = prepare(data, workers=WORKERS, progress=False)
    print(
        f"data: {data} ({SCANS} scans), cache ready in {time.perf_counter() - started:.1f} s "
        f"({len(summary.built)} built, {len(summary.skipped)} already cached)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = _task_loader(data, samples_per_pass)
    dataset, order = loader.dataset, list(loader.sampler)
    samples = [(dataset.records[i].series_uid, dataset.records[i].center_xyz, int(dataset.labels[i])) for i in order]
    geometry = (dataset.size, dataset.size_mm)
    mined = sum(dataset.records[i].weight > 1 for i in order)
    print(
        f"samples: {len(samples)} per pass, {dataset.size_mm} mm patches of {dataset.size} voxels, "
        f"{sum(s[2] for s in samples)} positives, {mined} mined, augmented by {loader.augment}"
    )
    scans = {uid: str(path) for uid, path in _index(data).scans.items()}
    _check_same_patches(dataset, scans, order[:4], geometry)

    results = {}
    for name, args in [
        ("noduleflow", (str(data), samples_per_pass)),
        ("naive", (scans, samples[:N_NAIVE], geometry)),
        ("diskcache", (scans, samples, geometry)),
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


def _index(data: Path):
    from noduleflow.data import load_index

    return load_index(data)


def _task_loader(data: Path, samples: int):
    """The classifier's train loader as the detector recipe builds it, with the bench's workers and epoch size."""
    import torch

    from noduleflow.config import resolve_config
    from noduleflow.recipes.detector import load_recipe
    from noduleflow.train.tasks import build_task

    torch.manual_seed(SEED)
    overrides = {
        "data.root": str(data),
        "classify.extra_candidates": [str(_mined_csv(data))],
        "data.num_workers": WORKERS,
        "classify.epoch_samples": samples,
        "run.seed": SEED,
    }
    cfg = resolve_config("classify", recipe=load_recipe()["classify"], overrides=overrides)
    return build_task(cfg).train_loader


def _mined_csv(data: Path) -> Path:
    """Stand-ins for the segmentation's mined candidates: every MINED_EVERY-th non-nodule row, moved 1.5 mm."""
    path = data / "mined_candidates.csv"
    if not path.exists():
        lines = (data / "candidates.csv").read_text().splitlines()
        rows = [line.split(",") for line in lines[1::MINED_EVERY]]
        moved = [f"{r[0]},{float(r[1]) + 1.5:.4f},{r[2]},{r[3]},0" for r in rows if r[4].strip() == "0"]
        path.write_text("\n".join([lines[0], *moved]) + "\n")
    return path


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
    import multiprocessing

    import torch

    # this process was spawned, which made spawn its default: DataLoader workers start by fork, as in training
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    if name == "noduleflow":
        rate, note = _noduleflow_rate(*args), ""
    elif name == "naive":
        rate, note = _timed(_loader(_NaivePatches(*args))), ""
    else:
        rate, note = _diskcache_rate(*args)
    return (rate, _hwm_mb("self"), max(_WORKER_HWM_MB), note)


def _noduleflow_rate(data: str, samples: int) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = _task_loader(Path(data), samples)
    _timed(loader)  # first pass: page cache warm
    return max(_timed(loader), _timed(loader))  # best of two warm passes, as for diskcache


def _diskcache_rate(scans: dict, samples: list, geometry: tuple) -> tuple[float, str]:
    folder = tempfile.mkdtemp(prefix="noduleflow-bench-diskcache-")
    try:
        started = time.perf_counter()
        _timed(_loader(_DiskcachePatches(scans, sorted(set(samples)), folder, geometry)))  # prepcache: by series
        cold = time.perf_counter() - started
        loader = _loader(_DiskcachePatches(scans, samples, folder, geometry))  # training order, every crop cached
        rate = max(_timed(loader), _timed(loader))  # best of two warm passes
        del loader
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
        return rate, f"   (filling it took {cold:.1f} s; diskcache holds {size / 1e6:.0f} MB)"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _loader(dataset):
    """The DataLoader settings the baselines share (the task's loader has the same batch and workers)."""
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True)


def _timed(loader) -> float:
    """Patches per second over one pass, timed from the first batch on (worker start-up excluded)."""
    batches, last = iter(loader), len(loader) - 1
    next(batches)
    started, count = time.perf_counter(), 0
    for k, (patches, *_) in enumerate(batches, start=1):
        count += len(patches)
        if k == last - 1:  # the workers still live (a loader may join them as its last batch arrives)
            children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
            _WORKER_HWM_MB.extend(_hwm_mb(pid) for pid in children)
    return count / (time.perf_counter() - started)


_WORKER_HWM_MB = [0.0]


def _hwm_mb(pid: str) -> float:
    """Peak resident set of a process in MB (VmHWM in /proc/<pid>/status), 0 if it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


def _check_same_patches(dataset, scans: dict, order: list, geometry: tuple) -> None:
    """All three approaches must cut the same (un-augmented) patches, or the comparison means nothing."""
    import torch

    samples = [(dataset.records[i].series_uid, dataset.records[i].center_xyz, int(dataset.labels[i])) for i in order]
    ours = dataset.__getitems__(order).collated[0]  # the loader's dataset: the patches before augmentation
    folder = tempfile.mkdtemp(prefix="noduleflow-bench-check-")
    try:
        naive = _NaivePatches(scans, samples, geometry, augment=False)
        book = _DiskcachePatches(scans, samples, folder, geometry, augment=False)
        for i in range(len(samples)):
            if not (
                torch.allclose(ours[i], naive[i][0], rtol=0, atol=1e-5)
                and torch.allclose(ours[i], book[i][0], rtol=0, atol=1e-5)
            ):
                sys.exit(f"patch {i} differs between the approaches: the benchmark would compare different work")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_scan(path: str):
    """SimpleITK read -> (int16 (I, R, C), origin, spacing, direction)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(path)
    hu = sitk.GetArrayFromImage(image).astype(np.int16, copy=False)
    return hu, np.array(image.GetOrigin()), np.array(image.GetSpacing()), np.array(image.GetDirection()).reshape(3, 3)


def _patch(hu: np.ndarray, geometry: tuple, xyz, size, size_mm) -> np.ndarray:
    """The mm patch around world point `xyz`, as the dataset resamples it (float32 HU)."""
    from noduleflow.ct.geometry import xyz_to_irc_float
    from noduleflow.data.patches import crop_mm

    return crop_mm(hu, xyz_to_irc_float(xyz, *geometry), size, size_mm, np.asarray(geometry[1])[::-1])


@functools.lru_cache(1)
def _augment():
    """The task's augmentation, whose ranges the book-style baselines draw from one sample at a time."""
    from noduleflow.data import Augment
    from noduleflow.train.tasks import _CT_AUGMENT

    return Augment(spatial_dims=3, **_CT_AUGMENT)


def _book_augment(patch):
    """The book's getCtAugmentedCandidate for one (1, D, H, W) patch: flips, rotation, zoom and shift in one
    3D affine_grid / grid_sample (air beyond the patch), then noise; the ranges of the task's `Augment`."""
    import torch

    from noduleflow.data.augment import _resample

    aug = _augment()
    flips = torch.rand(1, 3) < 0.5
    theta = aug._theta(patch.shape[1:], flips, None)
    out = _resample(patch[None], theta, aug.pad, "bilinear")[0]
    return out + torch.randn(out.shape) * (aug.noise_hu / 1000.0)


class _NaivePatches:
    """Every sample reads its whole scan with SimpleITK, then resamples and augments its patch."""

    def __init__(self, scans: dict, samples: list, geometry: tuple, augment: bool = True):
        self.scans, self.samples, self.geometry, self.augment = scans, samples, geometry, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        from noduleflow.data.patches import hu_to_unit

        uid, xyz, label = self.samples[i]
        hu, *geometry = _read_scan(self.scans[uid])
        patch = torch.from_numpy(hu_to_unit(_patch(hu, geometry, xyz, *self.geometry)))[None]
        return _book_augment(patch) if self.augment else patch, torch.tensor(label)


class _DiskcachePatches:
    """The book's LunaDataset (p2ch11-12/dsets.py): `getCt` keeps one whole scan (lru_cache),
    `getCtRawCandidate` is memoized on disk by a diskcache FanoutCache, and each sample is augmented alone.

    The memoized function is built in each process on first use (a diskcache wrapper cannot be
    pickled to a worker); all processes share one cache folder, as the book's workers do.
    """

    def __init__(self, scans: dict, samples: list, folder: str, geometry: tuple, augment: bool = True):
        self.scans, self.samples, self.folder, self.geometry, self.augment = scans, samples, folder, geometry, augment
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
        candidate_a, center_irc = self._get(uid, tuple(xyz), *(tuple(g) for g in self.geometry))
        candidate_t = torch.from_numpy(candidate_a).to(torch.float32).unsqueeze(0)
        candidate_t = (
            candidate_t / 1000.0
        )  # the one step the book leaves to its model: scale to [-1, 1] like the others
        if self.augment:
            candidate_t = _book_augment(candidate_t)
        pos_t = torch.tensor([not label, label], dtype=torch.long)
        return candidate_t, pos_t, uid, torch.tensor(center_irc)


def _book_raw_candidate(scans: dict, uid: str, xyz: tuple, size: tuple, size_mm: tuple) -> tuple[np.ndarray, tuple]:
    """The book's getCtRawCandidate: (float32 mm patch of the HU-clipped scan, centre voxel)."""
    from noduleflow.ct.geometry import xyz_to_irc

    hu, geometry = _book_ct(scans[uid])
    patch = np.clip(_patch(hu, geometry, xyz, size, size_mm), -1000, 1000)  # clipped after resampling, as ours
    return patch, tuple(xyz_to_irc(xyz, *geometry).tolist())


@functools.lru_cache(1, typed=True)
def _book_ct(path: str):
    """The book's getCt / Ct: the whole scan as float32 (clipped by the caller: after resampling, as ours)."""
    hu, *geometry = _read_scan(path)
    return hu.astype(np.float32), tuple(geometry)


if __name__ == "__main__":
    main()
