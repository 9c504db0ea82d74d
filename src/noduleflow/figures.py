"""Saving the PNGs people look at (previews, detections, training curves, FROC) in one way."""

from __future__ import annotations

import os
from pathlib import Path


def save_png(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Write matplotlib `fig` to `path` atomically (temp file, then rename), so a reader or a crash
    never leaves a half-written PNG where a finished one is expected."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
