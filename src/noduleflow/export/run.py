"""`export_run`: every model of a detector run into RUN/export/, each checked against eager, with manifest.json.

Files: RUN/export/<part>.onnx, <part>.pt2 for every part (segment, classify, malignancy when the run
has it), segment.int8.onnx for the U-Net (format "int8"), and with "onnx" joint.onnx where malignancy
shares the classifier's first blocks (fine-tuned from it with them frozen): both models in one net,
those blocks run once (`detect.models.JointNet`), what `detect` runs for them. The int8 export is the
U-Net's only: the classifiers see at most a few hundred patches a scan, a small share of its time, and
quantized they were no faster while their probabilities moved (docs/decisions.md, 2026-12-06); so they
keep float32.

Real inputs for the parity checks and the int8 calibration come from the run's training data (the
segment run's data.root, or `data`): lung windows of the first `scans` scans, as `detect` cuts them
(every 3rd window, 4 slices each), and patches around the candidates.csv rows of those scans (both
classes, at most 64), cut as each classifier was trained on them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noduleflow.detect.contract import JOINT, JOINT_OUTPUT, OUTPUTS, PARTS
from noduleflow.detect.models import DetectorModels, fuse_batchnorm, joint_model, load_detector, load_segmentation
from noduleflow.errors import ConfigError
from noduleflow.export.formats import export_onnx, export_pt2, quantize_onnx
from noduleflow.export.manifest import (
    EXPORT_DIR,
    FORMATS,
    MEASURED_KEY,
    find_entry,
    read_manifest,
    sha256_file,
    verified_file,
    write_manifest,
)
from noduleflow.export.parity import ExportError, parity

log = logging.getLogger("noduleflow")
CALIBRATION_SCANS = 4  # training scans whose lung windows calibrate the int8 U-Net and check every export
MAX_PATCHES = 64  # candidate patches the classifiers' exports are checked on


@dataclass(frozen=True)
class ExportSummary:
    """The manifest's entries of this export (reused ones included) and where it lies."""

    folder: Path
    entries: tuple[dict, ...]

    def describe(self) -> str:
        lines = [
            f"{e['file']:<24} {e['format']:<5} {e['parity']['compared']:<13} max abs diff {e['parity']['max_abs']:.2e}, "
            f"mean {e['parity']['mean_abs']:.2e} ({e['parity']['tolerance']})"
            for e in self.entries
        ]
        return "\n".join(lines + [f"{len(self.entries)} export(s) checked and listed in {self.folder}/manifest.json"])


def export_run(
    run_dir: str | Path,
    *,
    formats: tuple[str, ...] = FORMATS,
    data: str | Path | None = None,
    parts: tuple[str, ...] | None = None,
    scans: int = CALIBRATION_SCANS,
    force: bool = False,
) -> ExportSummary:
    """Export the models of the detector run `run_dir` (module docstring) in `formats` and update its manifest.

    parts: which models (default: every part the run has; ("segment",) needs only segment/, as `train detector`
    runs it before mining). An export whose manifest entry is intact and made from the current best.pt is kept
    unless `force`. An export outside its tolerance raises `ExportError` (nothing of it enters the manifest).
    """
    run_dir = Path(run_dir)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"unknown export format {', '.join(bad) or '(none)'}", fix=f"Use one of: {', '.join(FORMATS)}, or all."
        )
    models = load_segmentation(run_dir / "segment") if parts == ("segment",) else load_detector(run_dir)
    contracts = models.contracts()
    parts = tuple(p for p in (parts or PARTS) if p in contracts)
    source = Path(data) if data else _data_root(run_dir)
    # real inputs, cut by the first export that needs them (none when every entry is intact); the classifier's
    # patches also check the joint net when classify itself is not exported
    checked = parts + (("classify",) if "classify" in contracts and "classify" not in parts else ())
    cut: dict[str, list[np.ndarray]] = {}

    def inputs(part: str) -> list[np.ndarray]:
        if not cut:
            cut.update(_real_inputs(models, source, scans, checked))
        return cut[part]

    (run_dir / EXPORT_DIR).mkdir(parents=True, exist_ok=True)
    old = read_manifest(run_dir) if (run_dir / EXPORT_DIR / "manifest.json").is_file() else None
    kept = [e for e in (old or {}).get("models", [])]
    done = []
    for part in parts:
        model = getattr(models, part)
        folded = fuse_batchnorm(_copy(model))  # exported: batch norm folded (one pass less per activation map)
        eager = _eager(model)  # reference: the model as trained, eval mode, unfolded
        checkpoint = run_dir / part / "best.pt"
        src = {"file": f"{part}/best.pt", "sha256": sha256_file(checkpoint)}
        multiple = contracts[part].multiple if part == "segment" else None
        # a traced example of batch 2 and sizes of several multiples: a dimension of 1 would be specialised, not dynamic
        c = contracts[part]
        example = (
            torch.zeros(2, c.in_channels, 8 * c.multiple, 8 * c.multiple)
            if part == "segment"
            else torch.zeros(2, 1, *c.patch_size)
        )
        for fmt in formats:
            if fmt == "int8" and part != "segment":
                continue
            entry = find_entry(old, part, fmt)
            if entry is not None and not force and _intact(run_dir, entry):
                done.append({**entry, "input": c.to_dict()})  # the contract as read now (a field added since)
                continue
            name = f"{part}.int8.onnx" if fmt == "int8" else f"{part}.{fmt}"
            path = run_dir / EXPORT_DIR / name
            if fmt == "onnx":
                export_onnx(folded, example, path, multiple=multiple)
                exported = _ort(path)
            elif fmt == "int8":
                onnx = run_dir / EXPORT_DIR / f"{part}.onnx"
                if not onnx.is_file() or find_entry({"models": done}, part, "onnx") is None:
                    export_onnx(folded, example, onnx, multiple=multiple)
                quantize_onnx(onnx, path, inputs(part))
                exported = _ort(path)
            else:
                export_pt2(folded, example, path, multiple=multiple)
                exported = _pt2(path)
            check = parity(eager, exported, inputs(part), fmt, dense=part == "segment")
            check["on"] = (
                f"{sum(len(x) for x in inputs(part))} {'lung-window slices' if part == 'segment' else 'candidate patches'}"
                f" of {source}"
            )
            output = OUTPUTS[part] if fmt != "pt2" else OUTPUTS[part] + " (torch.export.load(file).module())"
            done.append(_entry(part, fmt, path, contracts[part], output, [src], check, "the eager model"))
    if "onnx" in formats and models.classify is not None:
        kept = [e for e in kept if e["part"] != JOINT]  # the joint is exported again, kept as it is, or dropped
        joint = _export_joint(run_dir, models, old, force, lambda: inputs("classify"), source)
        done += [joint] if joint else []
    keys = {(e["part"], e["format"]) for e in done}
    measured = None if models.measured is None else models.measured.to_dict()
    if parts == ("segment",) and old is not None:  # the U-Net alone: the classifiers' side stays as it was
        measured = old.get(MEASURED_KEY)
    write_manifest(run_dir, done + [e for e in kept if (e["part"], e["format"]) not in keys], measured)
    return ExportSummary(run_dir / EXPORT_DIR, tuple(done))


def _export_joint(run_dir: Path, models: DetectorModels, old: dict | None, force: bool, inputs, source: Path):
    """joint.onnx's manifest entry: the classifier and malignancy in one net (`detect.models.JointNet`), checked
    against the two models run apart; the intact one kept unless `force`; None (and no file) where they share no
    layer. inputs: a function giving the check's patch batches."""
    path = run_dir / EXPORT_DIR / f"{JOINT}.onnx"
    joint = joint_model(models)
    if joint is None:
        path.unlink(missing_ok=True)
        return None
    entry = find_entry(old, JOINT, "onnx")
    if entry is not None and not force and _intact(run_dir, entry):
        return entry
    contract = models.contracts()["classify"]
    export_onnx(fuse_batchnorm(_copy(joint)), torch.zeros(2, 1, *contract.patch_size), path)
    classify, malignancy = _eager(models.classify), _eager(models.malignancy)
    batches = inputs()
    check = parity(lambda x: np.concatenate([classify(x), malignancy(x)], 1), _ort(path), batches, "onnx", dense=False)
    check["on"] = f"{sum(len(x) for x in batches)} candidate patches of {source}"
    sources = [{"file": f"{part}/best.pt", "sha256": sha256_file(run_dir / part / "best.pt")} for part in PARTS[1:]]
    return _entry(
        JOINT, "onnx", path, contract, JOINT_OUTPUT, sources, check, "the classifier and malignancy run apart"
    )


def _entry(part: str, fmt: str, path: Path, contract, output: str, sources: list[dict], check: dict, reference: str):
    """The manifest entry of the export at `path` after its parity `check` against `reference` (logged); outside
    its tolerance the file is removed and `ExportError` raised. sources: the checkpoints it came from."""
    log.info(
        "export %s: max abs diff %.3g, mean %.3g (%s)",
        path.name,
        check["max_abs"],
        check["mean_abs"],
        check["tolerance"],
    )
    if not check.pop("ok"):
        path.unlink(missing_ok=True)
        raise ExportError(
            f"differs from {reference} by {check['max_abs']:.3g} at most, {check['mean_abs']:.3g} on "
            f"average, over the allowed {check['tolerance']}",
            path=path,
            fix="Detect with `--runtime torch`; report the export bug with this run's models.",
        )
    entry = {
        "part": part,
        "format": fmt,
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "input": contract.to_dict(),
        "output": output,
        "source": sources[0],
        "parity": check,
    }
    return entry | ({"sources": sources} if len(sources) > 1 else {})


def _intact(run_dir: Path, entry: dict) -> bool:
    """Whether `entry`'s file is there, undamaged and made from the current best.pt (else it is exported again)."""
    from noduleflow.errors import CheckpointError

    try:
        verified_file(run_dir, entry)
    except CheckpointError:
        return False
    return True


def _eager(model: torch.nn.Module):
    """`model` itself (eval mode, nothing folded) as a numpy Net: what every export is compared with."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.array(x, dtype=np.float32))).float().numpy()

    return run


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def _ort(path: Path):
    from noduleflow.detect.runtime import OrtNet

    return OrtNet(path)


def _pt2(path: Path):
    program = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return run


def _data_root(run_dir: Path) -> Path:
    from noduleflow.config import load_config

    root = Path(load_config(run_dir / "segment" / "config.yaml").data.root)
    if not root.is_dir():
        raise ConfigError(
            f"the run's training data {root} (segment/config.yaml's data.root) is not there",
            fix="Pass a folder of scans like the training ones with --data; its lung windows check the exports.",
        )
    return root


def _real_inputs(models: DetectorModels, data: Path, scans: int, parts: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """Per part, float32 input batches cut from the first `scans` scans of `data` as `detect` cuts them (module docstring)."""
    from noduleflow.ct import lung_mask, read_volume
    from noduleflow.data.luna16 import load_index
    from noduleflow.data.patches import crop_patch
    from noduleflow.detect.pipeline import scan_sources
    from noduleflow.detect.windows import lung_windows, window_inputs

    contracts = models.contracts()
    seg = contracts["segment"]
    inputs: dict[str, list[np.ndarray]] = {part: [] for part in parts}
    volumes = [read_volume(path) for path in scan_sources(data)[:scans]]
    for volume in volumes if "segment" in parts else ():
        windows = lung_windows(lung_mask(volume, step=2), chunk=8, margin=4, multiple=seg.multiple)
        for window in windows[::3]:
            inputs["segment"].append(
                next(window_inputs(volume.hu, window, context=seg.context, batch=4, to_unit=seg.to_unit))[1]
            )
    classifiers = [p for p in parts if p != "segment"]
    if classifiers:
        index = load_index(data) if (data / "candidates.csv").is_file() else None
        for part in classifiers:
            c, patches = contracts[part], []
            for volume in volumes:
                found = index.candidates_of([volume.series_uid]) if index else ()
                for cand in found[: max(MAX_PATCHES // len(volumes), 2)]:
                    center = np.asarray(volume.xyz_to_irc(cand.center_xyz, rounded=False), np.float64).reshape(3)
                    patches.append(crop_patch(volume.hu, center, c.patch_size, c.patch_mm or None, volume.spacing_irc))
            if len(patches) < 2:
                raise ConfigError(
                    f"{data} has too few candidates.csv rows on its first {len(volumes)} scans to check the "
                    f"{part} export",
                    fix="Pass --data with a LUNA16-layout folder of training scans.",
                )
            batch = c.to_unit(np.stack(patches))[:, None]  # (N, 1, D, H, W)
            inputs[part] = [np.ascontiguousarray(batch[b : b + 16]) for b in range(0, len(batch), 16)]
    if "segment" in parts and not inputs["segment"]:
        raise ConfigError(
            f"no lung found in the first {len(volumes)} scans of {data}",
            fix="Pass --data with chest CT scans like the training ones.",
        )
    return inputs
