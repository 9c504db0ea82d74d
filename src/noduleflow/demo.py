"""`noduleflow demo`: the whole pipeline on built-in synthetic CT, for a newcomer with no data."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def run_demo(out: Path, *, scans: int = 6, seed: int = 0) -> None:
    """Generate synthetic scans in the LUNA16 layout under `out/data` (once) and summarise them."""
    from noduleflow.synth import synthesize

    console = Console()
    data = Path(out) / "data"
    console.print(f"[bold]1/1[/bold] synthetic chest CT -> {data}")
    summary = synthesize(data, scans=scans, seed=seed, size="small", preview=True)
    console.print(summary.describe())
