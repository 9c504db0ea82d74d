"""`noduleflow detect`: run the `Predictor` over one scan or a LUNA16 folder and write the results.

SOURCE is a scan file (.mhd, .mha, .nii, .nii.gz), a DICOM series folder, or a LUNA16-layout
folder (its subset*/ scans). OUT receives::

    submission.csv      seriesuid,coordX,coordY,coordZ,probability   (LUNA16 format, world mm)
    detections.json     {"format": 2, "settings": {...}, "complete": bool, "failed": {source: reason},
                         "scans": [{"seriesuid", "source", "files", "findings": [...]}]} (`detections_file`)
    png/<name>.png      axial slices through each scan's top findings; name = safe_name(seriesuid)
    markups/<name>.mrk.json, masks/<name>.nii.gz, sr/<name>.dcm (DICOM series only): `detect.outputs`

Results are written as scans finish: after each scan both files are rewritten atomically, so a job
that is killed or meets a bad scan keeps every finished one. A scan that cannot be read is reported
on one line and skipped; the job goes on with the others and ends with a `ScanError` naming the
scans that failed. detections.json holds everything both files are made of, plus the job's settings
(run folder, its models' sizes and times, the predictor's settings): a rerun with the same settings
skips the scans it already holds (`restart=False`); any other job starts afresh and first replaces
the previous job's submission.csv, detections.json and PNGs, so an old result never looks current.
`complete` is true only once every scan of the job has its results.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from noduleflow.ct import CtVolume, read_volume
from noduleflow.detect import detections_file
from noduleflow.detect.measure import MEASURED_NAME
from noduleflow.detect.outputs import MARKUPS_DIR, MASKS_DIR, SR_DIR, scan_name, series_uid, write_scan_outputs
from noduleflow.detect.predictor import Predictor, ScanResult
from noduleflow.detect.render import write_scan_png
from noduleflow.errors import CheckpointError, ConfigError, CsvError, NoduleflowError, OutputError, ScanError
from noduleflow.files import atomic_open, output_error, writable_dir

SUBMISSION_CSV, DETECTIONS_JSON, PNG_DIR = "submission.csv", detections_file.NAME, "png"
PER_SCAN_DIRS = (
    PNG_DIR,
    MARKUPS_DIR,
    MASKS_DIR,
    SR_DIR,
)  # folders of OUT that hold only per-scan files `_write_scan` wrote: a fresh job empties them
_LISTED_FAILURES = 3  # failed scans named in the final error (all are printed as they fail)
log = logging.getLogger("noduleflow")


@dataclass(frozen=True)
class DetectSummary:
    """What one `detect` call did: results of the scans it ran, scans reused from an earlier run, where they went."""

    out: Path
    results: tuple[ScanResult, ...]
    seconds: float
    reused: int = 0  # scans whose results a previous run with the same settings left in OUT

    def describe(self) -> str:
        n = len(self.results)
        findings = sum(len(r.findings) for r in self.results)
        warned = sum(bool(r.warnings) for r in self.results)
        per_scan = sum(r.seconds for r in self.results) / max(n, 1)
        return (
            f"detected {findings} finding(s) in {n} scan(s) in {self.seconds:.1f} s ({per_scan:.1f} s per scan)"
            + (f", {self.reused} scan(s) kept from the previous run (--restart redoes them)" if self.reused else "")
            + (f", {warned} scan(s) with warnings" if warned else "")
            + f" -> {self.out / SUBMISSION_CSV}, {self.out / DETECTIONS_JSON}, {self.out / PNG_DIR}/"
        )


def scan_sources(source: str | Path) -> list[Path]:
    """The scans SOURCE names: itself (a file or a DICOM folder), or the subset*/ scans of a LUNA16 folder."""
    from noduleflow.data.luna16 import find_scans

    source = Path(source)
    if not source.exists():
        raise ScanError(
            "does not exist",
            path=source,
            fix="Pass a scan (.mhd/.mha/.nii/.nii.gz), a DICOM folder or a LUNA16 folder.",
        )
    if source.is_dir() and any(p.is_dir() and p.name.startswith("subset") for p in source.iterdir()):
        scans, _ = find_scans(source)
        if not scans:
            raise ScanError(
                "holds subset*/ folders but no scans in them",
                path=source,
                fix="Check the download, or pass one scan file.",
            )
        return list(scans.values())
    return [source]


def detect(
    source: str | Path,
    run: str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    restart: bool = False,
    **predictor_kwargs,
) -> DetectSummary:
    """Detect nodules in every scan of `source` with the detector run folder `run`; write OUT (module docstring).

    restart: redo every scan even when OUT holds results of a run with the same settings.
    Raises `ScanError` naming the scans that could not be read, after writing the others' results.
    """
    start = time.perf_counter()
    paths = scan_sources(source)
    out = writable_dir(out)  # before loading models and hours of work, not at the end
    writable_dir(out / PNG_DIR)
    predictor = Predictor.from_run(run, **predictor_kwargs)
    job = DetectionsFile.begin(out, _settings(run, predictor_kwargs), paths, restart=restart)
    results, failed = [], {}
    with Progress(
        TextColumn("[bold]detect"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[scan]}"),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("scans", total=len(paths), scan="", completed=len(job.entries))
        for path in paths:
            if job.has(path):
                continue
            bar.update(task, scan=escape(path.name))  # a file name is text, not rich markup
            try:
                volume, result = _run_scan(predictor, path)
            except (OutputError, CheckpointError, ConfigError):
                predictor = None  # (see below)
                raise  # the job's fault (its run, its OUT, its flags), not the scan's: no use going on
            except NoduleflowError as err:
                job.fail(path, err.message)
                if len(paths) == 1:
                    predictor = None  # (see below)
                    raise  # nothing else to go on with: the scan's own error is the one line
                failed[path] = err.what
                bar.console.print(
                    f"[yellow]warning:[/yellow] skipped {escape(err.message)}", highlight=False, soft_wrap=True
                )
                bar.advance(task)
                continue
            files = _write_scan(out, volume, result, path)
            job.add(path, result, files)  # submission.csv and detections.json now hold this scan
            for text in result.warnings:
                bar.console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)
            bar.console.print(
                f"{escape(result.series_uid[-24:])}: {len(result.findings)} finding(s) from {result.candidates} "
                f"candidate(s) in {result.seconds:.1f} s",
                highlight=False,
            )
            results.append(result)
            bar.advance(task)
    job.finish()
    # the predictor's ONNX Runtime thread pools end now, not when the caller lets go of an error's traceback
    # (which holds this frame): a process that forks later (synthesize) must not inherit running pools
    predictor = None
    if failed:
        names = "; ".join(f"{p.name} ({reason})" for p, reason in list(failed.items())[:_LISTED_FAILURES])
        more = f"; and {len(failed) - _LISTED_FAILURES} more" if len(failed) > _LISTED_FAILURES else ""
        raise ScanError(
            f"{len(failed)} of {len(paths)} scan(s) failed and have no results: {names}{more}",
            path=out,
            fix=f"The other scans' results are in {SUBMISSION_CSV} and {DETECTIONS_JSON}; fix or remove the failed "
            "scans and rerun the same command (finished scans are skipped).",
        )
    return DetectSummary(out, tuple(results), time.perf_counter() - start, reused=job.reused)


def _run_scan(predictor: Predictor, path: Path) -> tuple[CtVolume, ScanResult]:
    """Read and predict one scan; a scan the readers or the predictor reject raises `NoduleflowError`."""
    volume = read_volume(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kept in result.warnings and printed by `detect`, once
        result = predictor.predict(volume)
    return volume, result


def _write_scan(out: Path, volume: CtVolume, result: ScanResult, source: Path) -> list[str]:
    """Every per-scan output file of one scan (the PNG, then `detect.outputs`: markups, mask, DICOM SR); returns
    their paths relative to OUT. The result's candidate mask is dropped once written (a full scan's is ~100 MB).

    The one place per-scan files are written: file names come from `scan_name`, so a series uid
    read from a header can never name a path outside OUT. The paths returned are recorded in
    detections.json, so that the next fresh job removes them (with anything else in PER_SCAN_DIRS).
    """
    png = Path(PNG_DIR) / f"{scan_name(result, source)}.png"
    write_scan_png(volume, result, out / png)
    written = write_scan_outputs(out, volume, result, source)
    result.candidate_mask = None
    return [png.as_posix()] + [Path(p).relative_to(out).as_posix() for p in written]


def _settings(run: str | Path, predictor_kwargs: dict) -> dict:
    """What decides a scan's results: the run folder, its models (size and time of each best.pt and measured.json),
    the predictor's settings, its defaults included (a release that changes a default redoes the scans)."""
    run = Path(run).resolve()
    models = {
        p.relative_to(run).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted([*run.glob("*/best.pt"), *run.glob(f"malignancy/{MEASURED_NAME}")])
    }
    defaults = {
        name: p.default
        for name, p in inspect.signature(Predictor.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    given = {**defaults, **predictor_kwargs}
    kwargs = {k: v for k, v in sorted(given.items()) if k != "threads"}  # threads change speed, not results
    return json.loads(json.dumps({"run": str(run), "models": models, "predictor": kwargs}, default=str))


class DetectionsFile:
    """OUT/detections.json and OUT/submission.csv of one job, rewritten atomically after every scan.

    order: the job's scans (`_key`: absolute source paths); entries: key -> the scan's detections.json entry.
    """

    def __init__(self, out: Path, settings: dict, order: list[str], entries: dict[str, dict]):
        self.out, self.settings = out, settings
        self.order = order
        self.entries, self.failed = entries, {}
        self.reused = len(entries)

    @classmethod
    def begin(cls, out: Path, settings: dict, sources: list[Path], *, restart: bool = False) -> DetectionsFile:
        """The job's state: the previous job's finished scans of `sources` when its settings match (and not
        `restart`); every other file the previous job left (its files, png/*.png) is removed now."""
        previous = _read_previous(out / DETECTIONS_JSON)
        order = [_key(p) for p in sources]
        wanted = set(order)
        same = not restart and previous.get("settings") == settings
        kept = {
            e["source"]: e
            for e in previous.get("scans", [])
            if same and e["source"] in wanted and all((out / f).is_file() for f in e["files"])
        }
        keep_files = {(out / f).resolve() for e in kept.values() for f in e["files"]}
        stale = [out / f for e in previous.get("scans", []) for f in e["files"]]
        stale += [p for folder in PER_SCAN_DIRS if (out / folder).is_dir() for p in (out / folder).iterdir()]
        for path in stale:
            if path.resolve() not in keep_files and _inside(path, out) and path.is_file() and not path.is_symlink():
                path.unlink()
        job = cls(out, settings, order, {s: kept[s] for s in order if s in kept})
        if kept:
            log.info("%s: keeping %d scan(s) of the previous run with the same settings", out, len(kept))
        job.write(complete=False)
        return job

    def has(self, source: Path) -> bool:
        return _key(source) in self.entries

    def add(self, source: Path, result: ScanResult, files: list[str]) -> None:
        """Record one finished scan and rewrite both files."""
        self.entries[_key(source)] = _entry(_key(source), result, files)
        self.write(complete=False)

    def fail(self, source: Path, reason: str) -> None:
        self.failed[_key(source)] = reason
        self.write(complete=False)

    def finish(self) -> None:
        """The job's last write: `complete` when every scan has results."""
        self.write(complete=not self.failed and len(self.entries) == len(self.order))

    def write(self, *, complete: bool) -> None:
        """submission.csv and detections.json of the scans finished so far, each replaced atomically."""
        entries = [self.entries[s] for s in self.order if s in self.entries]
        rows = [("seriesuid", "coordX", "coordY", "coordZ", "probability")]
        rows += [
            (e["seriesuid"], *(f"{f[k]:.3f}" for k in ("coordX", "coordY", "coordZ")), f"{f['probability']:.6f}")
            for e in entries
            for f in e["findings"]
        ]
        doc = detections_file.document(self.settings, complete, self.failed, entries)
        # detections.json last: a crash between the two leaves a json that does not yet claim the scan,
        # so a rerun redoes it and rewrites both
        _write_text(self.out / SUBMISSION_CSV, lambda fh: csv.writer(fh, lineterminator="\n").writerows(rows))
        detections_file.write(self.out / DETECTIONS_JSON, doc)


def write_results(results: list[ScanResult], out: str | Path) -> tuple[Path, Path]:
    """OUT/submission.csv and OUT/detections.json of `results` (one finished job), each written atomically."""
    out = writable_dir(out)
    keys = [f"{k}:{r.series_uid}" for k, r in enumerate(results)]
    DetectionsFile(out, {}, keys, {k: _entry(r.series_uid, r, []) for k, r in zip(keys, results)}).write(complete=True)
    return out / SUBMISSION_CSV, out / DETECTIONS_JSON


def _key(source: Path) -> str:
    """A scan's identity across runs: its absolute path (a rerun from another folder still finds it)."""
    return str(Path(source).absolute())


def _entry(source: str, result: ScanResult, files: list[str]) -> dict:
    """One scan's detections.json entry: everything submission.csv and the summary are made of."""
    return detections_file.scan_entry(
        series_uid(result, Path(source)),
        source,
        files,
        candidates=result.candidates,
        seconds=result.seconds,
        warnings=list(result.warnings),
        findings=[f.to_dict() for f in result.findings],
    )


def _write_text(path: Path, write) -> None:
    try:
        with atomic_open(path, "w") as fh:
            write(fh)
    except OSError as err:
        raise output_error(err, path) from None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _read_previous(path: Path) -> dict:
    """The previous job's detections.json when it is one this version wrote and intact, else {} (start afresh)."""
    if not path.is_file():
        return {}
    try:
        return detections_file.read(path, own=True)
    except CsvError as err:
        log.warning("%s: not a detections file of this version (%s); starting afresh", path, err.what)
        return {}
