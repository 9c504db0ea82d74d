"""The `noduleflow` command line: thin typer commands, each parsing flags and calling one library function.

Heavy imports (torch) happen inside the commands so that `--help` stays instant.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from enum import StrEnum
from pathlib import Path

import typer
from typer.core import TyperGroup

from noduleflow import __version__
from noduleflow.errors import NoduleflowError

app = typer.Typer(
    name="noduleflow",
    help="Find and classify lung nodules in chest CT: synthesize or prepare data, train, detect, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"noduleflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find and classify lung nodules in chest CT scans.

    Start with `noduleflow demo`, or `noduleflow synth data/ --scans 10` for synthetic scans in the LUNA16 layout.
    """
    _log_to_terminal()


def _log_to_terminal() -> None:
    """The one handler noduleflow installs, and only here: the library's records (logger "noduleflow", INFO and
    up) on stderr through rich. Never on the root logger; once per process (tests run the CLI many times)."""
    import logging

    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("noduleflow")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=Console(stderr=True), show_time=False, show_path=False))
    logger.setLevel(logging.INFO)


@app.command()
def synth(
    out: Path = typer.Argument(
        ..., help="Folder to write the LUNA16 layout into (subsetN/*.mhd, annotations.csv, candidates.csv, ...)."
    ),
    scans: int = typer.Option(10, "--scans", "-n", min=1, help="Number of scans to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    size: str = typer.Option(
        "small",
        "--size",
        help="'small' (about 256x256 in-plane, for tests and the demo) or 'full' (512x512, like real scanners).",
    ),
    subsets: int = typer.Option(
        0, "--subsets", help="Number of subsetN folders (LUNA16 has 10); 0 picks min(scans, 10)."
    ),
    preview: bool = typer.Option(
        False, "--preview", help="Also write preview/<seriesuid>.png with slices through each nodule."
    ),
) -> None:
    """Write synthetic chest CT scans with nodules, vessels and ribs in the LUNA16 layout.

    Example: noduleflow synth data/synth --scans 3 --seed 1 --preview
    """
    from noduleflow.synth import synthesize

    summary = synthesize(out, scans=scans, seed=seed, size=size, subsets=subsets or None, preview=preview)
    typer.echo(summary.describe())


@app.command()
def prepare(
    data: Path = typer.Argument(
        ..., help="LUNA16-layout folder (subsetN/*.mhd), e.g. the output of `noduleflow synth`."
    ),
    cache: Path | None = typer.Option(None, "--cache", help="Cache folder; default DATA/.noduleflow-cache."),
    spacing: str | None = typer.Option(
        None, "--spacing", help="Resample every scan to X,Y,Z mm, e.g. 0.7,0.7,1.25; default: keep each scan's spacing."
    ),
    workers: int = typer.Option(
        0, "--workers", "-j", help="Scans built in parallel processes; 0 = one per CPU core (at most 8)."
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash cached entries instead of trusting their sizes (reads them in full)."
    ),
) -> None:
    """Read each scan once into a memory-mapped cache (int16 HU + lung mask) for fast training.

    Resumes an interrupted run; rebuilds entries that are partial, corrupt or stale.
    A scan that cannot be read is skipped with a warning; the others are cached, then the command exits 2 naming each.
    Example: noduleflow prepare data/synth --workers 4
    """
    from noduleflow.data.prepare_cache import parse_spacing
    from noduleflow.data.prepare_cache import prepare as prepare_cache

    summary = prepare_cache(data, cache=cache, spacing_xyz=parse_spacing(spacing), workers=workers, verify=verify)
    typer.echo(summary.describe())


@app.command()
def evaluate(
    data: Path = typer.Argument(
        ...,
        help="LUNA16-layout folder with annotations.csv (annotations_excluded.csv optional); its subset*/ scans, or its seriesuids.csv, are the scans scored.",
    ),
    submission: Path = typer.Argument(
        ...,
        help="submission.csv with columns seriesuid, coordX, coordY, coordZ (world mm), probability and optionally malignancy; or a detections JSON.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for froc.json and froc.png; default: the submission's folder."
    ),
    bootstrap: int = typer.Option(
        1000,
        "--bootstrap",
        min=0,
        help="Resamplings of the scans (of the hit nodules for the malignancy AUCs) for the 95% intervals; 0 skips them.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the bootstrap."),
) -> None:
    """Score detections as the LUNA16 challenge does: FROC, CPM (mean sensitivity at 1/8..8 false positives per scan) and its 95% interval.

    Marks within a nodule's radius hit it (once), marks on excluded findings are ignored, at most 100 marks per scan count.
    With malignancy in the submission, also its ROC AUC on the hit nodules beside their annotated diameter's alone.
    Example: noduleflow evaluate data/synth runs/detect/submission.csv -o runs/eval
    """
    from rich.console import Console

    from noduleflow.evaluate import evaluate as score

    report = score(data, submission, out, bootstrap=bootstrap, seed=seed)
    Console().print(report.table())
    typer.echo(report.describe())


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the demo's data, runs and results."),
    scans: int = typer.Option(24, "--scans", min=2, help="Synthetic training scans to generate."),
    held_out: int = typer.Option(
        12, "--held-out", min=1, help="Synthetic held-out scans (another seed) to detect on and score."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of the synthetic data and the training."),
    scale: float = typer.Option(
        0.25, "--scale", min=0.001, help="Fraction of the default detector recipe's training samples per epoch."
    ),
    mine: bool = typer.Option(
        True, "--mine/--no-mine", help="Train the classifier on the U-Net's own false positives too (recipes.mining)."
    ),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch; 0 keeps PyTorch's choice."),
) -> None:
    """Run the whole pipeline on built-in synthetic CT: synthesize, train, detect, evaluate; the last line is `CPM X`.

    Writes OUT/data and OUT/held_out (scans, CSVs, previews), OUT/runs/detector (models, training curves), OUT/detections (LUNA16 submission, detections.json, PNGs), OUT/evaluation (FROC) and OUT/timings.json (seconds per stage). A second run reuses the trained detector.
    Example: noduleflow demo --out demo
    """
    from noduleflow.demo import run_demo

    run_demo(out, scans=scans, held_out=held_out, seed=seed, scale=scale, threads=threads, mine=mine)


class Runtime(StrEnum):
    """Where `detect` runs the models (see noduleflow.detect.runtime)."""

    auto = "auto"
    int8 = "int8"
    onnx = "onnx"
    torch = "torch"


class MalignancyModel(StrEnum):
    """Where `detect`'s P(malignant) comes from (see noduleflow.detect.measure)."""

    measured = "measured"
    network = "network"


@app.command()
def detect(
    source: Path = typer.Argument(
        ..., help="A scan (.mhd, .mha, .nii, .nii.gz), a DICOM series folder, or a LUNA16 folder (its subset*/ scans)."
    ),
    run: Path = typer.Option(
        ...,
        "--run",
        help="Detector run folder holding segment/, classify/ and optionally malignancy/ "
        "(each a run of `noduleflow train`), as `noduleflow train detector DATA --run NAME` writes it to runs/NAME.",
    ),
    out: Path = typer.Option(
        Path("detections"),
        "--out",
        "-o",
        help="Folder for submission.csv, detections.json and the per-scan png/, markups/, masks/ and sr/ files.",
    ),
    threshold: float = typer.Option(
        0.2,  # detect.predictor.DEFAULT_THRESHOLD (a test keeps them equal; importing it here would slow --help)
        "--threshold",
        min=0.0,
        max=1.0,
        help="Segmentation probability that makes a voxel part of a candidate. Low by default: the classifier "
        "chooses the findings among --rank-candidates candidates, and fainter nodules get one.",
    ),
    max_candidates: int = typer.Option(
        100, "--max-candidates", min=1, help="Findings kept per scan at most (LUNA16 scores 100 marks per scan)."
    ),
    rank_candidates: int = typer.Option(
        300,
        "--rank-candidates",
        min=1,
        help="Candidates the classifier scores per scan to choose those findings (the segmentation's most "
        "confident first); more finds faint nodules among many vessel ends, for about one classifier pass each.",
    ),
    inner_peaks: bool = typer.Option(
        True,
        "--inner-peaks/--no-inner-peaks",
        help="Also score the segmentation's maxima inside a candidate far from its centre: a nodule fused with a "
        "vessel or the pleura into one blob gets its own mark.",
    ),
    blob_weight: float = typer.Option(
        0.25,  # detect.predictor.DEFAULT_BLOB_WEIGHT (a test keeps them equal)
        "--blob-weight",
        min=0.0,
        max=1.0,
        help="Also score the lung's blob-shaped spots that the segmentation left without a candidate (where small, "
        "faint and pleural nodules hide), and keep those the classifier calls nodules, scored P(nodule) x this: "
        "below the findings both models agree on. 0 turns them off (faster: a few seconds less per scan).",
    ),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads of the models; 0 keeps the runtime's choice."),
    runtime: Runtime = typer.Option(
        Runtime.auto,
        "--runtime",
        help="Where the models run. onnx: the run's float32 exports under "
        "ONNX Runtime, without torch; int8: the same with the U-Net in int8 (faster, about the same "
        "findings); both read RUN/export/ (`noduleflow export RUN`, which `train detector` runs); "
        "torch: eager PyTorch from the best.pt files; auto: each model where it is fastest, the U-Net "
        "from the exports (int8) and the classifiers in PyTorch (bfloat16 on CPUs with AMX or AVX512-BF16); "
        "the exports alone when the run has no best.pt.",
    ),
    mirror: bool = typer.Option(
        True,
        "--mirror/--no-mirror",
        help="Average the nodule classifier over each patch and its mirror "
        "image (ranks better, as training flips patches too; one more classifier pass per candidate).",
    ),
    segment_mirror: bool = typer.Option(
        False,
        "--segment-mirror/--no-segment-mirror",
        help="Average the U-Net's map over each slice and its left-right mirror image: twice the U-Net's time. "
        "Off by default: on the development scans it marked no more nodules (docs/decisions.md).",
    ),
    resample: bool = typer.Option(
        True,
        "--resample/--no-resample",
        help="Segment a scan whose voxel size lies outside the U-Net's training scans' (say 2 mm pixels for a "
        "detector trained on 0.7 mm) resampled to their median size; findings stay on the scan's own voxels. "
        "--no-resample: every scan as it is (faster on such scans, and it misses most small nodules there).",
    ),
    peaks: bool = typer.Option(
        False,
        "--peaks/--no-peaks",
        help="Also classify the segmentation's local maxima below --threshold (small, faint and pleural nodules "
        "often peak there), after its components; when these fill --max-candidates, the weakest give way to a few "
        "peaks. Off by default: every scan then classifies --max-candidates candidates.",
    ),
    malignancy_model: MalignancyModel = typer.Option(
        MalignancyModel.measured,
        "--malignancy-model",
        help="Where P(malignant) and the diameter come from. measured: a logistic regression over the nodule's "
        "measured size, density and calcium, fitted on the training scans' labelled nodules (malignancy/measured.json, "
        "which `train detector` writes; it ranked better than the network on the development scans), and the diameter "
        "measured along the nodule's free sides; network: the malignancy network, and the diameter of the "
        "segmentation's blob. A run without measured.json uses the network.",
    ),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Redo every scan. Without it, a rerun with the same run and settings "
        "keeps the scans OUT already holds results for (an interrupted or partly failed job goes on).",
    ),
) -> None:
    """Find nodules: lung field -> U-Net segmentation and blob spots -> nodule classifier -> malignancy.

    Writes OUT/submission.csv (LUNA16: seriesuid,coordX,coordY,coordZ,probability), OUT/detections.json
    (with malignancy and diameter), and per scan a PNG, 3D Slicer markups, the candidate mask (.nii.gz) and, for
    a DICOM series, a DICOM SR, updated as each scan finishes; score them with `noduleflow evaluate`.
    A scan that cannot be read is reported and skipped, and the command exits 2 at the end naming it.
    Example: noduleflow detect data/synth --run runs/detector -o runs/detector/detections
    """
    from noduleflow.detect.pipeline import detect as run_detect

    summary = run_detect(
        source,
        run,
        out,
        threshold=threshold,
        max_candidates=max_candidates,
        rank_candidates=rank_candidates,
        inner_peaks=inner_peaks,
        blob_weight=blob_weight,
        threads=threads,
        runtime=runtime.value,
        mirror=mirror,
        segment_mirror=segment_mirror,
        resample=resample,
        peaks=peaks,
        malignancy_model=malignancy_model.value,
        restart=restart,
    )
    typer.echo(summary.describe())


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder that `noduleflow train` wrote (a detector run or one plain run)."),
    detections: Path | None = typer.Option(
        None,
        "--detections",
        help="Folder that `noduleflow detect` wrote (detections.json, png/); default RUN/detections.",
    ),
    evaluation: Path | None = typer.Option(
        None,
        "--evaluation",
        help="Folder that `noduleflow evaluate` wrote (froc.json); default DETECTIONS or RUN/evaluation when it holds one.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="The HTML file to write; default RUN/report.html."),
) -> None:
    """Write one self-contained report.html (images inlined, no network): data, training curves, FROC and CPM,
    top findings and missed nodules on their slices, timings, environment. A section whose input is absent says
    which command makes it.
    Example: noduleflow report runs/detector --detections runs/detector/detections --evaluation runs/eval
    """
    from noduleflow.report import write_report

    typer.echo(str(write_report(run, out, detections=detections, evaluation=evaluation)))


class ExportFormat(StrEnum):
    """What `noduleflow export` writes (see noduleflow.export)."""

    onnx = "onnx"
    int8 = "int8"
    pt2 = "pt2"
    all = "all"


@app.command("export")
def export(
    run: Path = typer.Argument(
        ..., help="Detector run folder (segment/, classify/, optionally malignancy/), as `train detector` writes it."
    ),
    format_: list[ExportFormat] = typer.Option(
        [ExportFormat.all],
        "--format",
        "-f",
        help="onnx (float32, every model), int8 (the "
        "U-Net, calibrated on training scans), pt2 (torch.export programs), or all; repeatable.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Scans (LUNA16 layout) for the parity checks and the int8 calibration; "
        "default: the run's training data (segment/config.yaml's data.root).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Export again even the files whose manifest entry is intact and current."
    ),
) -> None:
    """Export every model of a detector run to RUN/export/ with a manifest.json (input contract, checksum, parity).

    Each export is compared with the eager model on real inputs (lung windows, candidate patches); the max abs
    difference is printed, and the export fails above its format's tolerance. `noduleflow detect --runtime onnx`
    then runs without torch.
    Example: noduleflow export runs/detector --format onnx --format int8
    """
    from noduleflow.export import export_run

    chosen = {f.value for f in format_}
    formats = ("onnx", "int8", "pt2") if "all" in chosen else tuple(f for f in ("onnx", "int8", "pt2") if f in chosen)
    typer.echo(export_run(run, formats=formats, data=data, force=force).describe())


@app.command()
def serve(
    run: Path = typer.Option(
        ..., "--run", help="Detector run folder (as `noduleflow train detector` writes it) whose models answer."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    state: Path | None = typer.Option(
        None, "--state", help="Folder for jobs (uploads, results), kept across restarts; default RUN/serve-state."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Bearer token every endpoint but /healthz, /readyz and the viewer needs "
        "(default: $NODULEFLOW_TOKEN; none: loopback only).",
    ),
    max_upload_mb: float = typer.Option(1024.0, "--max-upload-mb", help="Largest upload accepted (413 above)."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Scan jobs waiting at most (429 above)."),
    job_timeout: float = typer.Option(
        600.0, "--job-timeout", help="Seconds a scan job may run before it is stopped and fails."
    ),
    classify_max_batch: int = typer.Option(
        64, "--classify-max-batch", min=1, help="Patches per classifier call when /v1/classify requests are batched."
    ),
    classify_max_wait_ms: float = typer.Option(
        10.0, "--classify-max-wait-ms", min=0.0, help="How long a /v1/classify request waits for others to batch with."
    ),
    threshold: float = typer.Option(
        0.2,  # detect.predictor.DEFAULT_THRESHOLD, as `detect` (a test keeps them equal)
        "--threshold",
        min=0.0,
        max=1.0,
        help="Segmentation probability that makes a voxel part of a candidate (as for `detect`).",
    ),
    max_candidates: int = typer.Option(
        100, "--max-candidates", min=1, help="Findings kept per scan at most (as for `detect`)."
    ),
    blob_weight: float = typer.Option(
        0.25,  # detect.predictor.DEFAULT_BLOB_WEIGHT (a test keeps them equal)
        "--blob-weight",
        min=0.0,
        max=1.0,
        help="Score of a blob candidate, as a fraction of its P(nodule) (as for `detect`); 0 turns them off.",
    ),
    runtime: Runtime = typer.Option(Runtime.auto, "--runtime", help="Where the U-Net runs (as for `detect`)."),
    threads: int = typer.Option(
        0, "--threads", min=0, help="CPU threads for torch/ONNX Runtime per process; 0 keeps their choice."
    ),
) -> None:
    """Serve the HTTP API and the web viewer (docs/API.md) on uvicorn: upload scans, poll jobs, classify patches.

    Example: noduleflow serve --run runs/detector   (then open http://127.0.0.1:8000/)
    """
    from noduleflow.serve import ServeSettings

    settings = ServeSettings.from_env(
        run=run,
        host=host,
        port=port,
        state=state,
        token=token,
        max_upload_mb=max_upload_mb,
        max_queue=max_queue,
        job_timeout_s=job_timeout,
        classify_max_batch=classify_max_batch,
        classify_max_wait_ms=classify_max_wait_ms,
        threshold=threshold,
        max_candidates=max_candidates,
        blob_weight=blob_weight,
        runtime=runtime.value,
        threads=threads,
    )
    if not (run / "segment").is_dir():
        from noduleflow.errors import CheckpointError

        raise CheckpointError(
            "is not a detector run folder (it has no segment/)",
            path=run,
            fix="Pass the folder `noduleflow train detector DATA --run NAME` wrote (runs/NAME).",
        )
    import uvicorn

    from noduleflow.serve.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


# ---- noduleflow train <task>: one command per task, all calling noduleflow.train.train ----

from noduleflow.config import field_help  # noqa: E402 - here with the train commands that use it; light (yaml only, no torch)


class _TaskGroup(TyperGroup):
    """`noduleflow train <task>`: an unknown task is a user error with one line, not a usage dump."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            from noduleflow.errors import ConfigError

            raise ConfigError(f"unknown task '{args[0]}'", fix=f"Choose one of: {', '.join(self.list_commands(ctx))}.")
        return super().resolve_command(ctx, args)


train_app = typer.Typer(
    cls=_TaskGroup,
    no_args_is_help=True,
    help="Train a model. Each run writes runs/<name>/: config.yaml, last.pt, best.pt, metrics.jsonl, TensorBoard events, curves.png.\n\n"
    "Multi-process: torchrun --nproc_per_node=N -m noduleflow train digits ...",
)
app.add_typer(train_app, name="train")

_CONFIG = typer.Option(None, "--config", "-c", help="YAML recipe (e.g. configs/debug.yaml) over the task's defaults.")
_SET = typer.Option(None, "--set", help="Any config key, repeatable: --set optim.scheduler=none --set run.patience=3.")


def _flag(dotted: str, *names: str, **limits) -> typer.models.OptionInfo:
    """An optional flag for config key `dotted`, described by the field's own help text."""
    return typer.Option(None, *names, help=field_help(dotted), **limits)


# Each train option, declared once: (parameter, type, typer declaration, config key it sets or None).
_SHARED = (
    ("config", Path | None, _CONFIG, None),
    ("epochs", int | None, _flag("run.epochs", "--epochs", min=1), "run.epochs"),
    ("run", str | None, _flag("run.name", "--run"), "run.name"),
    (
        "resume",
        bool,
        typer.Option(
            False, "--resume", help="Continue the run folder's last.pt with its saved config.yaml (flags still apply)."
        ),
        None,
    ),
    ("batch_size", int | None, _flag("data.batch_size", "--batch-size", min=1), "data.batch_size"),
    ("lr", float | None, _flag("optim.lr", "--lr"), "optim.lr"),
    ("workers", int | None, _flag("data.num_workers", "--workers", min=0), "data.num_workers"),
    ("device", str | None, _flag("run.device", "--device"), "run.device"),
    ("seed", int | None, _flag("run.seed", "--seed"), "run.seed"),
    ("threads", int | None, _flag("run.threads", "--threads", min=0), "run.threads"),
    ("progress", bool | None, _flag("run.progress", "--progress/--no-progress"), "run.progress"),
    ("set_", list[str] | None, _SET, None),
)
_DATA_ARG = typer.Argument(
    ..., help="LUNA16-layout folder prepared with `noduleflow prepare` (or synthetic: `noduleflow synth`)."
)
_DATA = ("data", Path, _DATA_ARG, "data.root")
_TASK_OPTIONS = {  # what a task's command takes before the shared options
    "digits": (
        (
            "classes",
            str | None,
            typer.Option(
                None, "--classes", help="Digits to tell apart, e.g. 0,1 (ones versus zeros); default all ten."
            ),
            "digits.classes",
        ),
    ),
    "classify": (_DATA,),
    "malignancy": (
        _DATA,
        (
            "init",
            Path,
            typer.Option(
                ..., "--init", help="Classifier run folder (its best.pt) or checkpoint file to fine-tune from."
            ),
            "model.init",
        ),
        (
            "finetune_depth",
            int | None,
            _flag("model.finetune_depth", "--finetune-depth", min=0),
            "model.finetune_depth",
        ),
    ),
    "segment": (_DATA,),
}


def _train_command(task: str, doc: str) -> None:
    """Register `noduleflow train <task>`: its own options, then `_SHARED`, each flag set mapped to its config key."""
    params = (*_TASK_OPTIONS[task], *_SHARED)

    def command(**values) -> None:
        flags = {key: values[name] for name, _, _, key in params if key and values[name] is not None}
        flags.update({key: str(value) for key, value in flags.items() if isinstance(value, Path)})
        if "digits.classes" in flags:
            flags["digits.classes"] = _digit_list(flags["digits.classes"])
        _run_training(task, flags, values["set_"], values["config"], values["resume"])

    command.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=decl, annotation=kind)
            for name, kind, decl, _ in params
        ]
    )
    command.__doc__, command.__name__ = doc, f"train_{task}"
    train_app.command(task)(command)


def _digit_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        from noduleflow.errors import ConfigError

        raise ConfigError(
            f"--classes {text!r} is not a comma-separated list of digits", fix="Write e.g. --classes 0,1."
        ) from None


def _run_training(task: str, flags: dict, sets: list[str] | None, config: Path | None, resume: bool) -> None:
    """Flags -> dotted overrides -> resolved config -> `noduleflow.train.train`; rank 0 prints the summary."""
    import os

    from noduleflow.config import parse_override, resolve_config
    from noduleflow.train import train
    from noduleflow.train.distributed import close_distributed

    overrides = dict(flags)
    overrides.update(parse_override(text) for text in sets or [])
    cfg = resolve_config(task, path=config, overrides=overrides, resume=resume)
    try:
        result = train(cfg, resume=resume)
    finally:
        close_distributed()
    if os.environ.get("RANK", "0") == "0":
        typer.echo(result.describe())


_train_command(
    "digits",
    """Train the small 2D CNN on scikit-learn's 1,797 real 8x8 handwritten digits; tests best.pt on a held-out split.

    Example: noduleflow train digits --classes 0,1 --epochs 5 --run ones-vs-zeros
    """,
)
_train_command(
    "classify",
    """Train the 3D nodule classifier on LUNA16 candidate patches (nodule vs. not), split by series.

    Example: noduleflow prepare data/synth && noduleflow train classify data/synth --epochs 5
    """,
)
_train_command(
    "malignancy",
    """Fine-tune a nodule classifier run into a malignant-vs-benign classifier on annotated nodules.

    Example: noduleflow train malignancy data/synth --init runs/classify --finetune-depth 2
    """,
)
_train_command(
    "segment",
    """Train the 2D U-Net (context slices in) that marks nodule voxels, with a recall-weighted Dice loss.

    Example: noduleflow prepare data/synth && noduleflow train segment data/synth --epochs 5
    """,
)


@train_app.command("detector")
def train_detector(
    data: Path = _DATA_ARG,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Detector recipe YAML: one sub-tree of config keys per part, as configs/detector.yaml (the default).",
    ),
    run: str = typer.Option(
        "detector",
        "--run",
        help="Name of the detector run folder under --runs-dir (holds segment/, classify/, malignancy/).",
    ),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder that holds the run folders."),
    seed: int = typer.Option(0, "--seed", help="Seed of every part (the same split by series for all)."),
    scale: float = typer.Option(
        1.0,
        "--scale",
        min=0.001,
        help="Multiplies the samples per epoch of the recipe: 0.05 for a smoke test, 2 for a longer run.",
    ),
    malignancy: bool = typer.Option(
        True,
        "--malignancy/--no-malignancy",
        help="Also fine-tune the malignancy classifier and fit the measured malignancy model (when the data has "
        "labels; the measured model needs at least 10 labelled nodules).",
    ),
    threads: int = typer.Option(0, "--threads", min=0, help=field_help("run.threads")),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=field_help("run.progress")),
) -> None:
    """Train the whole detector (segmentation U-Net, nodule classifier, malignancy) into RUNS_DIR/RUN with a recipe.

    The default recipe, configs/detector.yaml, is sized for a 2-core laptop CPU (docs/decisions.md says how long each part takes); prints the time each part took. Then: noduleflow detect SCANS --run runs/detector
    Example: noduleflow synth data/synth --scans 160 && noduleflow train detector data/synth --run detector
    """
    from noduleflow.recipes.detector import train_detector as train_all

    result = train_all(
        data,
        run=run,
        runs_dir=runs_dir,
        seed=seed,
        scale=scale,
        malignancy=malignancy,
        threads=threads,
        progress=progress,
        recipe=config,
    )
    typer.echo(result.describe())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """Entry point of `noduleflow` and `python -m noduleflow`: user errors print one line and exit 2."""
    warnings.formatwarning = _one_line_warning  # a user reads "warning: ...", not a source location
    try:
        app()
    except NoduleflowError as err:
        typer.secho(f"error: {err.message}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code)
    except (OSError, RuntimeError) as err:  # a write the library did not name: still one line, never a traceback
        from noduleflow.files import WRITE_ERRNOS, is_torch_write_failure, output_error

        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            message = output_error(err, action="cannot access").message
        elif is_torch_write_failure(err):
            message = (
                "cannot write a file: the disk is probably full. Free some space or write to another disk, then rerun."
            )
        else:
            raise
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
        sys.exit(NoduleflowError.exit_code)
