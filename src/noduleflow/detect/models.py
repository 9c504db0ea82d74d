"""The trained models of a detector run folder, loaded for inference.

Layout of a detector run folder (what `noduleflow train detector DATA --run NAME` writes)::

    runs/NAME/segment/      2D U-Net run   (config.yaml, best.pt, ...)   required
    runs/NAME/classify/     nodule classifier run                        required
    runs/NAME/malignancy/   malignancy classifier run                    optional
                            (+ measured.json, the measured malignancy model: `detect.measure`)
    runs/NAME/export/       what `noduleflow export` wrote (ONNX, int8, pt2 and manifest.json): `detect.runtime`

Each sub-folder is an ordinary run folder of `noduleflow train <task>`, so any part can be
retrained on its own and dropped in.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from noduleflow.config import TrainConfig, load_config
from noduleflow.detect.contract import PARTS, InputContract, Nets
from noduleflow.detect.measure import MEASURED_NAME, MeasuredMalignancy, read_measured
from noduleflow.errors import CheckpointError
from noduleflow.models import build_model, input_size_of
from noduleflow.models.unet import segmentation_unet
from noduleflow.models.weights import load_weights, read_checkpoint

REQUIRED = ("segment", "classify")
MEASURED_FIX = "Delete it to use the malignancy network's P(malignant), or train the detector again."
DEFAULT_CONTEXT = 3  # segment.context of runs saved before it was a setting (the value they were trained with)


@dataclass
class DetectorModels:
    """The eval-mode networks of a detector; `malignancy` is None when the run has none.

    segment: (B, 2 * context + 1, H, W) -> (B, 1, H, W) logits; classify and malignancy: (B, 1, *model.input_size) -> (B, 2) logits.
    classify is None only for a segmentation-only `Predictor` (`Predictor.candidates`, as mining uses it).
    run_dir: the detector run folder (its export/ holds what `noduleflow export` wrote); segment_checkpoint: segment/best.pt.
    patch_mm: per classifier part, the millimetres (D, H, W) its patches span when it was trained on
        resampled patches (the part's `patch_mm`); a part not named here sees the scan's own voxels.
    context: the U-Net's context slices on each side (the segment run's `segment.context`).
    spacing_mm: per axis I, R, C, the (low, median, high) voxel spacing of the U-Net's training scans, as its
        best.pt records it (`trained_spacing`); empty for a run trained before it was recorded.
    measured: the measured malignancy model (malignancy/measured.json), None where the run has none.
    """

    segment: torch.nn.Module
    classify: torch.nn.Module | None
    malignancy: torch.nn.Module | None
    run_dir: Path | None
    segment_checkpoint: Path | None = None
    patch_mm: dict[str, tuple[float, ...]] = field(default_factory=dict)
    context: int = DEFAULT_CONTEXT
    spacing_mm: tuple[tuple[float, float, float], ...] = ()
    measured: MeasuredMalignancy | None = None

    def contracts(self) -> dict[str, InputContract]:
        """The input contract of each model present (see `detect.contract`)."""
        found = {
            "segment": InputContract(
                "segment",
                context=self.context,
                multiple=2 ** (getattr(self.segment, "depth", 3) - 1),
                spacing_mm=self.spacing_mm,
            )
        }
        for part in PARTS[1:]:
            model = getattr(self, part)
            if model is not None:
                found[part] = InputContract(
                    "patch", patch_size=input_size_of(model), patch_mm=tuple(self.patch_mm.get(part, ()))
                )
        return found


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
    patch_mm = {part: getattr(cfg, cfg.task).patch_mm for part, cfg in configs.items() if part != "segment"}
    patch_mm = {part: mm for part, mm in patch_mm.items() if mm}
    return DetectorModels(
        models["segment"],
        models["classify"],
        models["malignancy"],
        run_dir,
        run_dir / "segment" / "best.pt",
        patch_mm,
        configs["segment"].segment.context,
        trained_spacing(run_dir / "segment" / "best.pt"),
        read_measured(run_dir / "malignancy" / MEASURED_NAME, fix=MEASURED_FIX)
        if models["malignancy"] is not None
        else None,
    )


def load_segmentation(segment_run: str | Path) -> DetectorModels:
    """The U-Net of one segment run folder alone (best.pt), for a segmentation-only `Predictor` (mining, export)."""
    segment_run = Path(segment_run)
    context = (
        load_config(segment_run / "config.yaml").segment.context
        if (segment_run / "config.yaml").is_file()
        else DEFAULT_CONTEXT
    )
    checkpoint = segment_run / "best.pt"
    return DetectorModels(
        load_part(segment_run, "segment"),
        None,
        None,
        segment_run.parent,
        checkpoint,
        context=context,
        spacing_mm=trained_spacing(checkpoint),
    )


def trained_spacing(checkpoint: Path) -> tuple[tuple[float, float, float], ...]:
    """The (low, median, high) voxel spacing (mm) per axis I, R, C of the scans a segment checkpoint was trained on
    (`train.segment_task`), or () where it records none (a run trained before it was recorded) or is absent."""
    if not checkpoint.is_file():
        return ()
    spacing = read_checkpoint(checkpoint).get("trained_on", {}).get("spacing_irc_mm", ())
    return tuple(tuple(float(v) for v in axis) for axis in spacing)


def fuse_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution in an nn.Sequential into that conv, in place.

    Same outputs (up to float rounding) with one pass less over each activation map: at inference
    a batch norm is a per-channel scale and shift, which the conv's weights and bias can absorb.
    """
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        for k in range(len(seq) - 1):
            conv, bn = seq[k], seq[k + 1]
            if isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)) and isinstance(
                bn, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
            ):
                seq[k], seq[k + 1] = fuse_conv_bn_eval(conv.eval(), bn.eval()), torch.nn.Identity()
    return module


def load_part(sub: Path, part: str, cfg: TrainConfig | None = None) -> torch.nn.Module:
    """The eval-mode model of one part's run folder `sub` ("segment", "classify" or "malignancy"), from its best.pt.

    cfg: the folder's config.yaml when the caller has already read it."""
    cfg = cfg or load_config(sub / "config.yaml")
    if part == "segment":
        model = segmentation_unet(cfg.model.width, cfg.model.depth, cfg.segment.context)
    else:
        model = build_model(cfg.model, in_channels=1, num_classes=2)
    return load_weights(model, sub / "best.pt").eval()


def _fix(run_dir: Path, part: str) -> str:
    parent, name = run_dir.parent, run_dir.name
    return (
        f"Train the detector with `noduleflow train detector DATA --run {name} --runs-dir {parent}`, or this part alone with "
        f"`noduleflow train {part} DATA --set run.runs_dir={run_dir} --run {part}`"
        + (" --init <classify run>" if part == "malignancy" else "")
        + "."
    )


class TorchNet:
    """A torch module as a `detect.contract.Net`: float32 numpy batch in, float32 numpy logits out, eager PyTorch.

    Runs a batch-norm-folded copy in channels_last(_3d) memory format (both faster at inference:
    docs/decisions.md, 2026-11-29), so the caller's module is left as given; a module without parameters (a test's stand-in) is used as it is. threads: torch's thread
    count during each call, set and restored (0 keeps the process's). bf16: run under bfloat16 autocast
    (worth it only where the CPU computes bf16 natively, `train.wrap.cpu_has_native_bf16`); the logits come back
    as float32.
    """

    def __init__(self, module: torch.nn.Module, *, threads: int = 0, bf16: bool = False):
        if any(True for _ in module.parameters()):
            module = fuse_batchnorm(copy.deepcopy(module).eval())
        self.module, self.threads, self.bf16 = module.eval(), int(threads), bool(bf16)
        self.memory_format: torch.memory_format | None = None
        convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
        if convs:
            self.memory_format = (
                torch.channels_last if isinstance(convs[0], torch.nn.Conv2d) else torch.channels_last_3d
            )
            self.module.to(memory_format=self.memory_format)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with (
            torch.inference_mode(),
            _torch_threads(self.threads),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16),
        ):
            x = np.ascontiguousarray(x, dtype=np.float32)
            t = torch.from_numpy(x if x.flags.writeable else x.copy())  # torch refuses read-only arrays
            if self.memory_format is not None and t.dim() == (4 if self.memory_format == torch.channels_last else 5):
                t = t.contiguous(memory_format=self.memory_format)
            return self.module(t).float().numpy()


@contextlib.contextmanager
def _torch_threads(threads: int):
    """torch's intra-op thread count set to `threads` (0: unchanged) inside, restored after: constructing or
    running a Predictor changes nothing process-wide."""
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def torch_nets(models: DetectorModels, *, threads: int = 0, parts: tuple[str, ...] = PARTS, bf16: bool = False) -> Nets:
    """`models` as eager-PyTorch `Nets` (the Predictor's runtime "torch"), with the joint classifier and malignancy
    model when the two share their first blocks (`joint_model`); `parts` limits which become nets (the others None);
    bf16: every net under bfloat16 autocast (`TorchNet`)."""
    nets = {
        part: None
        if getattr(models, part) is None or part not in parts
        else TorchNet(getattr(models, part), threads=threads, bf16=bf16)
        for part in PARTS
    }
    files = {
        part: str(models.run_dir / part / "best.pt") for part in PARTS if models.run_dir and nets[part] is not None
    }
    joint = joint_model(models) if "classify" in parts and "malignancy" in parts else None
    return Nets(
        nets["segment"],
        nets["classify"],
        nets["malignancy"],
        models.contracts(),
        "torch",
        files,
        joint=None if joint is None else TorchNet(joint, threads=threads, bf16=bf16),
        measured=models.measured if "malignancy" in parts else None,
    )


class JointNet(torch.nn.Module):
    """The classifier and the malignancy model in one pass: (B, 1, D, H, W) patches -> (B, 4) logits, the
    classifier's two then malignancy's two (`detect.contract.JOINT_OUTPUT`).

    Malignancy is fine-tuned from the classifier with its first blocks frozen (`model.finetune_depth`), so
    both compute the same features there; this module computes them once (`shared` top-level blocks) and
    runs each model's own later blocks on them. Built by `joint_model`, which checks the outputs.
    """

    def __init__(self, classify: torch.nn.Module, malignancy: torch.nn.Module, shared: int):
        super().__init__()
        blocks = list(classify.children())
        self.trunk = torch.nn.Sequential(*blocks[:shared])
        self.classify = torch.nn.ModuleList(blocks[shared:])
        self.malignancy = torch.nn.ModuleList(list(malignancy.children())[shared:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        return torch.cat([_run_blocks(self.classify, x), _run_blocks(self.malignancy, x)], dim=1)


def _run_blocks(blocks, x: torch.Tensor) -> torch.Tensor:
    """Top-level blocks in order, flattening before a linear head, as the nodule classifiers' forward runs them."""
    for block in blocks:
        x = block(torch.flatten(x, 1) if isinstance(block, torch.nn.Linear) else x)
    return x


def shared_blocks(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """How many leading top-level blocks `a` and `b` have in common: same kind, same weights and statistics."""
    count = 0
    for x, y in zip(a.children(), b.children(), strict=False):
        sx, sy = x.state_dict(), y.state_dict()
        if type(x) is not type(y) or sx.keys() != sy.keys() or not all(torch.equal(sx[k], sy[k]) for k in sx):
            break
        count += 1
    return count


def joint_model(models: DetectorModels) -> JointNet | None:
    """A `JointNet` of `models`' classifier and malignancy model, or None where one is missing, their patches
    differ, they share no block, or the blocks run in order do not reproduce each model's own outputs (an
    architecture whose forward is more than its blocks in order)."""
    classify, malignancy = models.classify, models.malignancy
    if classify is None or malignancy is None or type(classify) is not type(malignancy):
        return None
    contracts = models.contracts()
    if contracts["classify"] != contracts["malignancy"]:
        return None
    shared = shared_blocks(classify, malignancy)
    if shared == 0 or shared >= len(list(classify.children())):
        return None
    joint = JointNet(copy.deepcopy(classify), copy.deepcopy(malignancy), shared).eval()
    x = torch.randn(2, 1, *contracts["classify"].patch_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        apart = torch.cat([classify.eval()(x), malignancy.eval()(x)], dim=1)
        together = joint(x)
    if together.shape != apart.shape or not torch.allclose(together, apart, rtol=1e-4, atol=1e-4):
        return None
    return joint
