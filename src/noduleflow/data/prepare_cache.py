"""`noduleflow prepare`: fill the scan cache, one process per scan, resuming where a run stopped.

Each scan is read once (and resampled when a spacing is asked for), its lung mask computed, and
both written into the cache (see `noduleflow.data.cache`). Complete entries whose key still
matches the source are skipped, so an interrupted run resumes; partial, corrupt or stale
entries are rebuilt.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

from noduleflow.data.cache import DEFAULT_CACHE_NAME, ScanCache, check_writable, source_key
from noduleflow.data.luna16 import find_scans
from noduleflow.errors import CacheError, ConfigError, ScanError


@dataclass
class PrepareSummary:
    """What one `prepare` run did; bytes are on-disk sizes of the complete entries."""

    cache: ScanCache
    built: list[str] = field(default_factory=list)
    rebuilt: dict[str, str] = field(default_factory=dict)   # series UID -> why the old entry was unusable
    skipped: list[str] = field(default_factory=list)
    cache_bytes: int = 0
    scan_bytes: int = 0                                      # int16 voxels x 2 of the cached arrays
    seconds: float = 0.0

    def describe(self) -> str:
        total = len(self.built) + len(self.skipped)
        ratio = f" ({self.cache_bytes / self.scan_bytes:.4f}x the int16 scans)" if self.scan_bytes else ""
        return (f"prepared {total} scan(s) in {self.seconds:.1f} s: {len(self.built)} built "
                f"({len(self.rebuilt)} of them rebuilt), {len(self.skipped)} already cached -> {self.cache.dir}, "
                f"{self.cache_bytes / 1e6:.1f} MB{ratio}")


def parse_spacing(text: str | None) -> tuple[float, float, float] | None:
    """'0.7,0.7,1.25' -> (0.7, 0.7, 1.25) mm in X, Y, Z order; None or '' -> None (native spacing)."""
    # imported here so that this function's change stays inside it
    from noduleflow.ct.volume import MAX_SPACING_MM, MIN_SPACING_MM, spacing_in_range

    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not spacing_in_range(values):
        raise ConfigError(f"--spacing {text!r} is not three millimetre values from {MIN_SPACING_MM} to "
                          f"{MAX_SPACING_MM}",
                          fix="Write it as X,Y,Z in mm, e.g. --spacing 0.7,0.7,1.25 (or leave it out to keep each scan's spacing).")
    return values  # type: ignore[return-value]


def prepare(data: str | Path, *, cache: str | Path | None = None, spacing_xyz: Sequence[float] | None = None,
            workers: int = 0, progress: bool = True, verify: bool = False) -> PrepareSummary:
    """Cache every scan under `data`/subset*/ into `cache` (default `data`/.noduleflow-cache).

    workers: processes that build entries in parallel; 0 picks min(cpu count, 8), 1 builds in this
    process. verify: re-hash existing entries instead of trusting their sizes (reads them in full).
    """
    start = time.perf_counter()
    data = Path(data)
    scans, _ = find_scans(data)
    if not scans:
        raise ScanError("holds no scans under subset*/", path=data,
                        fix="Download LUNA16 into it (subset0/ ... subset9/) or run `noduleflow synth` into it.")
    if workers < 0:
        raise ConfigError(f"--workers {workers} is negative", fix="Use 0 (one per CPU core) or a positive count.")
    store = ScanCache(data / DEFAULT_CACHE_NAME if cache is None else cache, spacing_xyz=spacing_xyz)
    check_writable(store.dir)

    summary = PrepareSummary(store)
    jobs = []
    for uid, path in sorted(scans.items()):
        key, source = source_key(path, data, store.spacing_xyz)
        problem = store.problem(uid, key, verify=verify)
        if problem is None:
            summary.skipped.append(uid)
            continue
        if problem != "missing":
            summary.rebuilt[uid] = problem
        jobs.append((str(path), str(store.root), store.spacing_xyz, key, source))

    workers = min(workers or min(os.cpu_count() or 1, 8), max(len(jobs), 1))
    with _progress_bar(progress and bool(jobs)) as bar:
        task = bar.add_task("prepare", total=len(jobs))
        for uid in _run(jobs, workers):
            summary.built.append(uid)
            bar.advance(task)

    for uid in summary.built + summary.skipped:
        entry = store.open(uid)
        summary.scan_bytes += entry.hu.size * 2
        summary.cache_bytes += sum(p.stat().st_size for p in entry.path.iterdir())
    summary.seconds = time.perf_counter() - start
    return summary


def _run(jobs: list[tuple], workers: int):
    """Yield each built series UID; the first failure cancels the rest and is raised."""
    if workers <= 1:
        for job in jobs:
            yield _build(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        pending = {pool.submit(_build, *job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    yield future.result()
        except BrokenProcessPool as err:
            raise CacheError("a worker process died while building the cache: out of memory, or a script of yours "
                             "that calls noduleflow lacks `if __name__ == \"__main__\":` (workers are spawned and re-import it)",
                             path=jobs[0][1], fix="Rerun `noduleflow prepare` with fewer --workers (finished entries are kept), "
                             "or put your script's code under `if __name__ == \"__main__\":`.") from err
        finally:
            for future in pending:
                future.cancel()


def _init_worker() -> None:
    """One ITK thread per worker process: the processes already use every core."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _build(path: str, cache_root: str, spacing_xyz, key: str, source: dict) -> str:
    """Read, (resample), mask and store one scan; runs in a worker process. Returns its series UID."""
    from noduleflow.ct.io import read_volume
    from noduleflow.ct.lungmask import lung_mask
    from noduleflow.ct.resample import resample

    volume = read_volume(path)
    if spacing_xyz is not None:
        volume = resample(volume, spacing_xyz)
    ScanCache(cache_root, spacing_xyz=spacing_xyz).write(volume, lung_mask(volume), key, source)
    return volume.series_uid


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            # completed / elapsed: rich's windowed speed jumps when several workers finish at once
            return Text(f"{task.completed / task.elapsed:.2f} scans/s" if task.completed and task.elapsed else "- scans/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                    TextColumn("eta"), TimeRemainingColumn(), TimeElapsedColumn(), disable=not enabled)
