"""Saving the PNGs people look at (previews, detections, training curves, FROC) in one way."""

from __future__ import annotations

from pathlib import Path

from noduleflow.files import atomic_open, output_error


def save_png(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Write matplotlib `fig` to `path` atomically (temp file, then rename), so a reader or a crash
    never leaves a half-written PNG where a finished one is expected; a failed write is an `OutputError`."""
    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", **savefig_kwargs)
    except OSError as err:
        raise output_error(err, path) from None
    return path
