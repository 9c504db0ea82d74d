"""The trained models of a detector run folder, loaded for inference.

Layout of a detector run folder (what `noduleflow train detector DATA --run NAME` writes)::

    runs/NAME/segment/      2D U-Net run   (config.yaml, best.pt, ...)   required
    runs/NAME/classify/     nodule classifier run                        required
    runs/NAME/malignancy/   malignancy classifier run                    optional

Each sub-folder is an ordinary run folder of `noduleflow train <task>`, so any part can be
retrained on its own and dropped in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from noduleflow.config import TrainConfig, load_config
from noduleflow.errors import CheckpointError
from noduleflow.models import build_model
from noduleflow.train.checkpoint import load_checkpoint, load_model_state
from noduleflow.train.segment_task import build_unet

PARTS = ("segment", "classify", "malignancy")
REQUIRED = ("segment", "classify")


@dataclass
class DetectorModels:
    """The eval-mode networks of a detector; `malignancy` is None when the run has none.

    segment: (B, 7, H, W) -> (B, 1, H, W) logits; classify and malignancy: (B, 1, *model.input_size) -> (B, 2) logits.
    classify is None only for a segmentation-only `Predictor` (`Predictor.candidates`, as `detect.mining` uses it).
    segment_checkpoint: the segment run's best.pt, beside which `detect.runtime` keeps the U-Net's ONNX export.
    patch_mm: per classifier part, the millimetres (D, H, W) its patches span when it was trained on
        resampled patches (`data.patch_mm`); a part not named here sees the scan's own voxels.
    """

    segment: torch.nn.Module
    classify: torch.nn.Module | None
    malignancy: torch.nn.Module | None
    run_dir: Path | None
    segment_checkpoint: Path | None = None
    patch_mm: dict[str, tuple[float, ...]] = field(default_factory=dict)


def load_detector(run_dir: str | Path) -> DetectorModels:
    """Build and load the best.pt of each part of `run_dir`; a missing required part raises `CheckpointError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError("is not a detector run folder", path=run_dir, fix=_fix(run_dir, "segment"))
    present = [part for part in PARTS if part in REQUIRED or (run_dir / part / "best.pt").is_file()]
    for part in present:  # every file checked before any is read: the error names all that is missing first
        for name in ("config.yaml", "best.pt"):
            if not (run_dir / part / name).is_file():
                raise CheckpointError(f"has no {part}/{name}", path=run_dir, fix=_fix(run_dir, part))
    configs = {part: load_config(run_dir / part / "config.yaml") for part in present}
    models = {part: load_part(run_dir / part, part, configs[part]) if part in present else None for part in PARTS}
    patch_mm = {part: cfg.data.patch_mm for part, cfg in configs.items() if part != "segment" and cfg.data.patch_mm}
    return DetectorModels(models["segment"], models["classify"], models["malignancy"], run_dir, run_dir / "segment" / "best.pt",
                          patch_mm)


def load_segmentation(segment_run: str | Path) -> DetectorModels:
    """The U-Net of one segment run folder alone (best.pt), for a segmentation-only `Predictor` (mining, export)."""
    segment_run = Path(segment_run)
    return DetectorModels(load_part(segment_run, "segment"), None, None, segment_run.parent, segment_run / "best.pt")


def fuse_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution in an nn.Sequential into that conv, in place.

    Same outputs (up to float rounding) with one pass less over each activation map: at inference
    a batch norm is a per-channel scale and shift, which the conv's weights and bias can absorb.
    """
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        for k in range(len(seq) - 1):
            conv, bn = seq[k], seq[k + 1]
            if isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)) and isinstance(bn, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                seq[k], seq[k + 1] = fuse_conv_bn_eval(conv.eval(), bn.eval()), torch.nn.Identity()
    return module


def load_part(sub: Path, part: str, cfg: TrainConfig | None = None) -> torch.nn.Module:
    """The eval-mode model of one part's run folder `sub` ("segment", "classify" or "malignancy"), from its best.pt.

    cfg: the folder's config.yaml when the caller has already read it."""
    cfg = cfg or load_config(sub / "config.yaml")
    if part == "segment":
        model = build_unet(cfg.model.width, cfg.model.depth)
    else:
        model = build_model(cfg.model, in_channels=1, num_classes=2)
    load_model_state(model, load_checkpoint(sub / "best.pt")["model"], sub / "best.pt")
    return model.eval()


def _fix(run_dir: Path, part: str) -> str:
    parent, name = run_dir.parent, run_dir.name
    return (f"Train the detector with `noduleflow train detector DATA --run {name} --runs-dir {parent}`, or this part alone with "
            f"`noduleflow train {part} DATA --set run.runs_dir={run_dir} --run {part}`"
            + (" --init <classify run>" if part == "malignancy" else "") + ".")
