"""The report's "timings" and "environment" sections: seconds per stage, and what the numbers were measured on.

The CPU flags shown are those that change what PyTorch and ONNX Runtime can do on a CPU: AVX2 and
AVX-512 (vector width), AVX512-BF16 and AMX (bfloat16 / int8 matrix units), VNNI (int8 dot products).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from noduleflow.report import html
from noduleflow.report.inputs import RunInfo

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def timings_section(run: RunInfo, timings: Mapping[str, Any], scans: list[dict[str, Any]]) -> str:
    """Seconds per training part (training.json), per demo stage (`timings`) and of detection (detections.json)."""
    rows = []
    seconds = run.training.get("seconds")
    if isinstance(seconds, dict):
        rows += [("training", str(part), _seconds(s)) for part, s in seconds.items()]
        finite = [s for s in seconds.values() if _finite(s)]
        rows.append(("training", "all parts", _seconds(sum(finite)) if finite else "-"))
    rows += [("pipeline", str(stage), _seconds(s)) for stage, s in timings.items()]
    spent = [s["seconds"] for s in scans if _finite(s.get("seconds"))]
    if spent:
        rows.append(("detection", f"{len(spent)} scans", _seconds(sum(spent))))
        rows.append(("detection", "per scan", _seconds(sum(spent) / len(spent))))
    body = html.table(("stage", "step", "time"), rows, numeric=(2,)) if rows else ""
    if not isinstance(seconds, dict):
        body += html.note(
            "No training.json with seconds per part in the run (a detector run writes it when `noduleflow train "
            "detector` finishes; plain runs have none)."
        )
    return body


def environment_section() -> str:
    """Versions, Python, CPU model and flags, GPU, and the date the report was written."""
    rows = [(name, _version(name)) for name in ("noduleflow", "torch", "numpy", "onnxruntime")]
    rows.append(("Python", f"{platform.python_version()} ({platform.python_implementation()})"))
    rows.append(("system", f"{platform.system()} {platform.release()} {platform.machine()}"))
    model, flags = _cpu()
    rows.append(("CPU", f"{model}, {os.cpu_count()} logical cores"))
    rows.append(("CPU flags", ", ".join(f for f in _FLAGS if f in flags) or "none of " + ", ".join(_FLAGS)))
    rows.append(("GPU", _gpu()))
    rows.append(("written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")))
    return html.table(("what", "value"), rows)


def read_timings(timings: Mapping[str, Any] | str | Path | None, run: RunInfo) -> dict[str, float]:
    """The demo's {stage: seconds}: the mapping given, a JSON file given, else timings.json in the run or
    two folders up (the demo's OUT/runs/detector layout); non-numbers are left out."""
    from noduleflow.report.inputs import read_json

    if timings is None:
        for path in (run.dir / "timings.json", run.dir.parent.parent / "timings.json"):
            if path.is_file():
                timings = path
                break
    if isinstance(timings, (str, Path)):
        timings = read_json(Path(timings))
    if not isinstance(timings, Mapping):
        return {}
    return {str(k): float(v) for k, v in timings.items() if _finite(v)}


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _seconds(s: object) -> str:
    if not _finite(s):
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "noduleflow":
            from noduleflow import __version__

            return f"{__version__} (source tree)"
        return "not installed"


def _cpu() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo on Linux; platform's processor string elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown", set()
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.split("\n\n")[0].splitlines()) if v
    )
    return fields.get("model name", platform.processor() or "unknown"), set(fields.get("flags", "").split())


def _gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA install must not stop the report; it is shown as none
        pass
    return "none (CPU only)"
