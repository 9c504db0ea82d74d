"""`synthesize`: write N synthetic chest CT scans and their CSVs in the LUNA16 layout.

Scans are independent (each has its own random streams), so they are made in a process pool
and the result does not depend on the number of workers. Re-running into a folder that already
holds the same scans skips them: a scan is rewritten only if its record is missing, was made by
other code or arguments, or its files no longer hash as recorded.
"""

from __future__ import annotations

import multiprocessing
import numbers
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from noduleflow.ct import read_volume
from noduleflow.errors import ConfigError, NoduleflowError
from noduleflow.synth import layout
from noduleflow.synth.plan import check_size, plan_scan, series_uid
from noduleflow.synth.preview import write_preview
from noduleflow.synth.scan import render_scan


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote: counts for people (`describe`) and for tests."""

    out: Path
    size: str
    seed: int
    series_uids: tuple[str, ...]
    subsets: int
    nodules: int
    excluded: int
    candidates: int
    positives: int  # class-1 candidates
    malignant: int
    diameters: tuple[float, ...]  # of the annotated nodules, mm
    written: int  # scans rendered by this run
    skipped: int  # scans already present and identical
    removed: int  # scans of an earlier run that this one does not make
    seconds: float
    csv_paths: dict[str, Path] = field(default_factory=dict)
    previews: tuple[Path, ...] = ()

    @property
    def scans(self) -> int:
        return len(self.series_uids)

    @property
    def malignant_fraction(self) -> float:
        return self.malignant / self.nodules if self.nodules else 0.0

    def describe(self) -> str:
        """A few lines for people: what is where, and how many of each."""
        sizes = f" ({min(self.diameters):.1f}-{max(self.diameters):.1f} mm)" if self.diameters else ""
        lines = [
            f"{self.scans} synthetic chest CT scans ({self.size}, seed {self.seed}) in {self.out}/subset0..subset{self.subsets - 1}: "
            f"{self.written} written, {self.skipped} already up to date"
            + (f", {self.removed} old ones removed" if self.removed else "")
            + f" ({self.seconds:.1f} s)",
            f"  annotations.csv: {self.nodules} nodules{sizes}, {self.malignant_fraction:.0%} malignant "
            f"(annotations_with_malignancy.csv); annotations_excluded.csv: {self.excluded} findings under 3 mm",
            f"  candidates.csv: {self.candidates} candidates, {self.positives} of them on nodules (class 1)",
        ]
        if self.previews:
            lines.append(f"  previews: {self.out / 'preview'}/<seriesuid>.png")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    index: int
    size: str
    scale: float
    subset: int
    preview: bool
    key: str


def synthesize(
    out: str | os.PathLike,
    *,
    scans: int = 10,
    seed: int = 0,
    size: str = "small",
    subsets: int | None = None,
    preview: bool = False,
    scale: float = 1.0,
    workers: int | None = None,
    progress: bool = True,
) -> SynthSummary:
    """Write `scans` synthetic chest CT scans under `out` in the LUNA16 layout; the same arguments give the same bytes.

    size: "small" (192-256 in-plane, 100-140 slices; for tests and the demo) or "full"
    (512x512, 0.6-0.9 mm pixels, 0.625-2.5 mm slices, like real scanners). subsets: number of
    subsetN folders (default min(scans, 10)); scans fill them in order. preview: also write
    preview/<seriesuid>.png. scale: voxel-count factor for quick tests (0.5 halves I, R and C and
    doubles the spacing; the chest stays whole). workers: processes (default: one per CPU, at
    most the number of scans). Raises `ConfigError` for bad arguments and `NoduleflowError` for
    an output folder that cannot be written.
    """
    start = time.perf_counter()
    subsets = _check_args(scans, seed, size, subsets, scale, workers)
    scans, seed = int(scans), int(seed)
    out = _output_folder(out)
    key = layout.code_digest()
    jobs = [
        _Job(out, seed, i, size, scale, i * subsets // scans, preview, f"{key}:{seed}:{i}:{size}:{scale}")
        for i in range(scans)
    ]
    uids = [series_uid(seed, i, size) for i in range(scans)]
    if len(set(uids)) != len(uids):  # 30 random digits: never in practice, but a silent clash would merge two scans
        raise ConfigError(f"series UIDs clash for seed {seed}", fix="Use another --seed.")
    removed = layout.remove_stale(out, {uid: layout.scan_path(out, job.subset, uid) for uid, job in zip(uids, jobs)})
    results = _run(jobs, workers, progress)
    rows = {name: [r for res in results for r in res["rows"][name]] for name in layout.CSV_FILES}
    paths = layout.write_csvs(out, rows)
    malignant = sum(int(r[-1]) for r in rows["malignancy"])
    return SynthSummary(
        out=out,
        size=size,
        seed=seed,
        series_uids=tuple(uids),
        subsets=subsets,
        nodules=len(rows["annotations"]),
        excluded=len(rows["excluded"]),
        candidates=len(rows["candidates"]),
        positives=sum(r[-1] == "1" for r in rows["candidates"]),
        malignant=malignant,
        diameters=tuple(float(r[-1]) for r in rows["annotations"]),
        written=sum(r["written"] for r in results),
        skipped=sum(not r["written"] for r in results),
        removed=removed,
        seconds=time.perf_counter() - start,
        csv_paths=paths,
        previews=tuple(Path(r["preview"]) for r in results if r["preview"]),
    )


def _make_scan(job: _Job) -> dict:
    """Plan, render and write one scan unless an identical one is already there; returns its rows and what was done."""
    uid = series_uid(job.seed, job.index, job.size)
    mhd = layout.scan_path(job.out, job.subset, uid)
    record = layout.current_record(job.out, uid, mhd, job.key)
    plan = volume = None
    if record is None:
        plan = plan_scan(job.seed, job.index, job.size, job.scale)
        volume = render_scan(plan).volume
        record = layout.write_scan(job.out, volume, mhd, job.key, layout.plan_rows(plan))
    png = None
    if job.preview:
        png = job.out / "preview" / f"{uid}.png"
        if volume is not None or not png.exists():
            png.parent.mkdir(exist_ok=True)
            plan = plan or plan_scan(job.seed, job.index, job.size, job.scale)
            write_preview(volume if volume is not None else read_volume(mhd), plan, png)
    return {
        "index": job.index,
        "rows": record["rows"],
        "written": volume is not None,
        "preview": str(png) if png else None,
    }


def _start_method() -> str:
    """ "fork" while this process runs a single thread (workers inherit its imports: no second of imports each),
    else "forkserver": a fork copies the locks other threads hold (ONNX Runtime's or OpenMP's pools, after a
    `detect` in the same process), and a child that needs one waits forever."""
    methods = multiprocessing.get_all_start_methods()
    tasks = Path("/proc/self/task")
    threads = len(os.listdir(tasks)) if tasks.is_dir() else threading.active_count()
    if "fork" in methods and threads == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _run(jobs: list[_Job], workers: int | None, show: bool) -> list[dict]:
    """Run `_make_scan` over jobs with a progress bar, in a process pool when more than one worker is useful.

    On Linux the workers are forked before the progress bar starts its thread, so they inherit
    the modules already imported (no second of imports per worker) and no lock held by another thread.
    """
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(cpus, 4 if jobs and jobs[0].size == "full" else 8)  # a full scan needs ~1-2 GB while rendering
    workers = max(1, min(workers, len(jobs)))
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=Console(stderr=True), disable=not show)
    task = progress.add_task("scans", total=len(jobs))
    if workers == 1:
        results = []
        with progress:
            for job in jobs:
                results.append(_make_scan(job))
                progress.advance(task)
        return results
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(_start_method())) as pool:
        futures = [pool.submit(_make_scan, job) for job in jobs]  # the first submit starts every worker
        results = []
        with progress:
            for future in as_completed(futures):
                results.append(future.result())
                progress.advance(task)
    return sorted(results, key=lambda r: r["index"])


def _check_args(scans, seed, size, subsets, scale, workers) -> int:
    """Validate the arguments of `synthesize`; returns the number of subsets to use."""
    if not _is_int(scans) or scans < 1:
        raise ConfigError(f"scans must be a whole number of at least 1, got {scans!r}", fix="Pass --scans 1 or more.")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(
            f"seed must be a whole number of at least 0, got {seed!r}",
            fix="Pass --seed 0 or another non-negative number.",
        )
    check_size(size, scale)
    if subsets is None:
        subsets = min(scans, 10)
    if not _is_int(subsets) or not 1 <= subsets <= scans:
        raise ConfigError(
            f"subsets must be between 1 and the number of scans ({scans}), got {subsets!r}",
            fix=f"Pass --subsets between 1 and {scans}, or 0 for min(scans, 10).",
        )
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ConfigError(f"workers must be at least 1, got {workers!r}", fix="Leave it unset for one per CPU.")
    return int(subsets)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _output_folder(out) -> Path:
    """Create `out` if needed and check that files can be written in it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NoduleflowError(
            "exists and is a file, not a folder", path=out, fix="Pass a folder path for the synthetic data."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        layout.write_atomic(out / ".write-test", b"").unlink()
    except OSError as err:
        raise NoduleflowError(
            f"cannot be written ({err.strerror or err})",
            path=out,
            fix="Choose a folder you can write to, or fix its permissions.",
        ) from err
    return out
