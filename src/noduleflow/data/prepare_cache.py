"""`noduleflow prepare`: fill the scan cache, one process per scan, resuming where a run stopped.

Each scan is read once (and resampled when a spacing is asked for), its lung mask computed, and
both written into the cache (see `noduleflow.data.cache`). Complete entries whose key still
matches the source are skipped, so an interrupted run resumes; partial, corrupt or stale
entries are rebuilt.

A scan that cannot be read does not stop the others: each is warned about as it fails (one line:
the file and why), the rest are cached, and the run ends with a `ScanError` naming every bad scan,
so the CLI exits non-zero only after doing all it could. Worker processes end themselves when the
process that started them dies (a `kill -9` of `prepare` leaves no orphan holding hundreds of MB).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from noduleflow.data.cache import DEFAULT_CACHE_NAME, ScanCache, check_writable, source_key
from noduleflow.data.luna16 import find_scans
from noduleflow.errors import CacheError, ConfigError, NoduleflowError, ScanError

_BUILT, _CACHED = "built", "cached"  # what _build did, when it did not fail


@dataclass
class PrepareSummary:
    """What one `prepare` run did; bytes are on-disk sizes of the complete entries."""

    cache: ScanCache
    built: list[str] = field(default_factory=list)
    rebuilt: dict[str, str] = field(default_factory=dict)  # series UID -> why the old entry was unusable
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # scan file -> why it could not be read
    cache_bytes: int = 0
    scan_bytes: int = 0  # int16 voxels x 2 of the cached arrays
    seconds: float = 0.0

    def describe(self) -> str:
        total = len(self.built) + len(self.skipped)
        ratio = f" ({self.cache_bytes / self.scan_bytes:.4f}x the int16 scans)" if self.scan_bytes else ""
        return (
            f"prepared {total} scan(s) in {self.seconds:.1f} s: {len(self.built)} built "
            f"({len(self.rebuilt)} of them rebuilt), {len(self.skipped)} already cached -> {self.cache.dir}, "
            f"{self.cache_bytes / 1e6:.1f} MB{ratio}" + (f"; {len(self.failed)} unreadable" if self.failed else "")
        )


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
        raise ConfigError(
            f"--spacing {text!r} is not three millimetre values from {MIN_SPACING_MM} to {MAX_SPACING_MM}",
            fix="Write it as X,Y,Z in mm, e.g. --spacing 0.7,0.7,1.25 (or leave it out to keep each scan's spacing).",
        )
    return values  # type: ignore[return-value]


def prepare(
    data: str | Path,
    *,
    cache: str | Path | None = None,
    spacing_xyz: Sequence[float] | None = None,
    workers: int = 0,
    progress: bool = True,
    verify: bool = False,
) -> PrepareSummary:
    """Cache every scan under `data`/subset*/ into `cache` (default `data`/.noduleflow-cache).

    workers: processes that build entries in parallel; 0 picks min(cpu count, 8), 1 builds in this
    process. verify: re-hash existing entries instead of trusting their sizes (reads them in full).
    A scan that cannot be read is warned about and left out; once every other scan is cached, a
    `ScanError` names them all (module docstring).
    """
    start = time.perf_counter()
    data = Path(data)
    scans, _ = find_scans(data)
    if not scans:
        raise ScanError(
            "holds no scans under subset*/",
            path=data,
            fix="Download LUNA16 into it (subset0/ ... subset9/) or run `noduleflow synth` into it.",
        )
    if workers < 0:
        raise ConfigError(f"--workers {workers} is negative", fix="Use 0 (one per CPU core) or a positive count.")
    store = ScanCache(data / DEFAULT_CACHE_NAME if cache is None else cache, spacing_xyz=spacing_xyz)
    check_writable(store.dir)

    summary = PrepareSummary(store)
    jobs = []
    for uid, path in sorted(scans.items()):
        try:
            key, source = source_key(path, data, store.spacing_xyz)
        except OSError as err:
            _fail(summary, path, f"cannot be read ({err.strerror or err})")
            continue
        problem = store.problem(uid, key, verify=verify)
        if problem is None:
            summary.skipped.append(uid)
            continue
        if problem != "missing":
            summary.rebuilt[uid] = problem
        jobs.append((uid, str(path), str(store.root), store.spacing_xyz, key, source, verify))

    workers = min(workers or min(os.cpu_count() or 1, 8), max(len(jobs), 1))
    with _progress_bar(progress and bool(jobs)) as bar:
        task = bar.add_task("prepare", total=len(jobs))
        for uid, path, why in _run(jobs, workers):
            if why == _BUILT:
                summary.built.append(uid)
            elif why == _CACHED:  # another prepare built it meanwhile
                summary.rebuilt.pop(uid, None)
                summary.skipped.append(uid)
            else:
                summary.rebuilt.pop(uid, None)
                _fail(summary, Path(path), why)
            bar.advance(task)

    for uid in summary.built + summary.skipped:
        with store.lock(uid):  # not while another prepare rewrites it
            entry = store.open(uid)
        summary.scan_bytes += entry.hu.size * 2
        summary.cache_bytes += sum(p.stat().st_size for p in entry.path.iterdir())
    summary.seconds = time.perf_counter() - start
    if summary.failed:
        names = sorted(os.path.relpath(p, data) for p in summary.failed)
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise ScanError(
            f"{len(names)} scan(s) could not be read and are not cached: {listed} ({summary.describe()})",
            path=data,
            fix="Repair or remove them (the warnings above say why each failed), then rerun "
            "`noduleflow prepare`; the scans already cached are kept.",
        )
    return summary


def _fail(summary: PrepareSummary, path: Path, why: str) -> None:
    """Record an unreadable scan and say so now, in one line naming the file (the run goes on)."""
    summary.failed[str(path)] = why
    warnings.warn(f"{path}: {why} (skipped; the other scans are still prepared)", stacklevel=3)


def _run(jobs: list[tuple], workers: int):
    """Yield `_build`'s (series UID, scan path, what happened) per job; a cache failure cancels the rest, raised."""
    if workers <= 1:
        for job in jobs:
            yield _build(*job)
        return
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        pending = {pool.submit(_build, *job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    yield future.result()
        except BrokenProcessPool as err:
            raise CacheError(
                "a worker process died while building the cache: out of memory, or a script of yours "
                'that calls noduleflow lacks `if __name__ == "__main__":` (workers are spawned and re-import it)',
                path=jobs[0][1],
                fix="Rerun `noduleflow prepare` with fewer --workers (finished entries are kept), "
                'or put your script\'s code under `if __name__ == "__main__":`.',
            ) from err
        finally:
            for future in pending:
                future.cancel()


def _init_worker(parent_pid: int) -> None:
    """Die with the parent (the readers are our own numpy code: no library thread pool to size here)."""
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """End this process as soon as `parent_pid` is gone, however it died (a `kill -9` runs no cleanup of ours).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Everywhere, and
    for a parent that died before that call: a daemon thread polls os.getppid(), which changes to the
    reaper's pid once the parent is gone. A temporary file the worker leaves is cleaned by the next writer.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="noduleflow-parent-watch", daemon=True).start()


def _build(
    uid: str, path: str, cache_root: str, spacing_xyz, key: str, source: dict, verify: bool
) -> tuple[str, str, str]:
    """Read, (resample), mask and store one scan under the entry's lock; runs in a worker process.

    Returns (uid, path, _BUILT), (uid, path, _CACHED) when another `prepare` on this cache built the
    entry while we waited for its lock, or (uid, path, why) when the scan cannot be read or
    processed: any error of reading, resampling or masking is the scan's (an unreadable file, a
    degenerate volume), so it is reported and the run goes on. A failure to write the cache raises.
    """
    store = ScanCache(cache_root, spacing_xyz=spacing_xyz)
    with store.lock(uid):
        if store.problem(uid, key, verify=verify) is None:
            return uid, path, _CACHED
        return _build_locked(store, uid, path, key, source)


def _build_locked(store: ScanCache, uid: str, path: str, key: str, source: dict) -> tuple[str, str, str]:
    """`_build`'s work once the entry's lock is held and the entry is known to need it."""
    from noduleflow.ct.io import read_volume
    from noduleflow.ct.lungmask import lung_mask
    from noduleflow.ct.resample import resample

    try:
        volume = read_volume(path)
        if store.spacing_xyz is not None:
            volume = resample(volume, store.spacing_xyz)
        mask = lung_mask(volume)
    except NoduleflowError as err:
        return uid, path, err.what if err.path in (None, path) else f"{err.path}: {err.what}"
    except Exception as err:  # noqa: BLE001 (any failure on one scan's data is that scan's; see the docstring)
        return uid, path, f"cannot be prepared ({type(err).__name__}: {err})"
    store.write(volume, mask, key, source, series_uid=uid)
    return uid, path, _BUILT


def _progress_bar(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            # completed / elapsed: rich's windowed speed jumps when several workers finish at once
            return Text(
                f"{task.completed / task.elapsed:.2f} scans/s" if task.completed and task.elapsed else "- scans/s"
            )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )
