"""The `noduleflow` command line: thin typer commands, each parsing flags and calling one library function.

Heavy imports (torch, SimpleITK) happen inside the commands so that `--help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

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
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find and classify lung nodules in chest CT scans.

    Start with `noduleflow demo`, or `noduleflow synth data/ --scans 10` for synthetic scans in the LUNA16 layout.
    """


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the LUNA16 layout into (subsetN/*.mhd, annotations.csv, candidates.csv, ...)."),
    scans: int = typer.Option(10, "--scans", "-n", min=1, help="Number of scans to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    size: str = typer.Option("small", "--size", help="'small' (about 256x256 in-plane, for tests and the demo) or 'full' (512x512, like real scanners)."),
    subsets: int = typer.Option(0, "--subsets", help="Number of subsetN folders (LUNA16 has 10); 0 picks min(scans, 10)."),
    preview: bool = typer.Option(False, "--preview", help="Also write preview/<seriesuid>.png with slices through each nodule."),
) -> None:
    """Write synthetic chest CT scans with nodules, vessels and ribs in the LUNA16 layout.

    Example: noduleflow synth data/synth --scans 3 --seed 1 --preview
    """
    from noduleflow.synth import synthesize

    summary = synthesize(out, scans=scans, seed=seed, size=size, subsets=subsets or None, preview=preview)
    typer.echo(summary.describe())


@app.command()
def prepare(
    data: Path = typer.Argument(..., help="LUNA16-layout folder (subsetN/*.mhd), e.g. the output of `noduleflow synth`."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache folder; default DATA/.noduleflow-cache."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Resample every scan to X,Y,Z mm, e.g. 0.7,0.7,1.25; default: keep each scan's spacing."),
    workers: int = typer.Option(0, "--workers", "-j", help="Scans built in parallel processes; 0 = one per CPU core (at most 8)."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash cached entries instead of trusting their sizes (reads them in full)."),
) -> None:
    """Read each scan once into a memory-mapped cache (int16 HU + lung mask) for fast training.

    Resumes an interrupted run; rebuilds entries that are partial, corrupt or stale.
    Example: noduleflow prepare data/synth --workers 4
    """
    from noduleflow.data.prepare_cache import parse_spacing, prepare as prepare_cache

    summary = prepare_cache(data, cache=cache, spacing_xyz=parse_spacing(spacing), workers=workers, verify=verify)
    typer.echo(summary.describe())


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the demo's data and results."),
    scans: int = typer.Option(6, "--scans", help="Number of synthetic scans to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the synthetic data."),
) -> None:
    """Run the pipeline on built-in synthetic CT: generate scans in the LUNA16 layout and summarise them.

    Example: noduleflow demo --out demo
    """
    from noduleflow.demo import run_demo

    run_demo(out, scans=scans, seed=seed)


def main() -> None:
    """Entry point of `noduleflow` and `python -m noduleflow`: user errors print one line and exit 2."""
    try:
        app()
    except NoduleflowError as err:
        typer.secho(f"error: {err.message}", err=True, fg=typer.colors.RED)
        sys.exit(err.exit_code)
