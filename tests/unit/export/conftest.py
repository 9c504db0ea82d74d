"""A small detector run folder with untrained (but not fresh-looking) models over 2 synthetic scans, exported once."""

from __future__ import annotations

import pytest
import torch

from noduleflow.config import resolve_config, save_config
from noduleflow.models import build_model
from noduleflow.models.unet import segmentation_unet
from noduleflow.synth import synthesize
from noduleflow.train.checkpoint import (
    save_checkpoint,  # the trainer's writer: what detect and export must read
)

PARTS = {
    "segment": {"model.width": 4, "model.depth": 3},
    "classify": {
        "model.width": 4,
        "model.depth": 2,
        "model.input_size": [8, 16, 16],
        "classify.patch_mm": [12, 16, 16],
    },
    "malignancy": {"model.width": 4, "model.depth": 2, "model.input_size": [8, 16, 16]},
}

TRAINED_SPACING = [[0.5, 2.5, 10.0], [0.5, 2.0, 10.0], [0.5, 2.0, 10.0]]
"""The segment checkpoint's record of its training scans' spacing (`detect.grid`): wide, so that the synthetic
scans here are segmented as they are."""


def make_run(root, data, finetuned: bool = False):
    """RUN/{segment,classify,malignancy}/ with config.yaml and best.pt, batch-norm statistics away from 0 / 1.

    finetuned: malignancy as `train detector` makes it, fine-tuned from the classifier: its patches, and its
    weights but for the last two blocks (`model.finetune_depth` 2); else a model of its own."""
    torch.manual_seed(0)
    built = {}
    for part, flags in PARTS.items():
        if finetuned and part == "malignancy":
            flags = {**PARTS["malignancy"], "malignancy.patch_mm": PARTS["classify"]["classify.patch_mm"]}
        cfg = resolve_config(part, overrides={"data.root": str(data), **flags})
        model = (
            segmentation_unet(cfg.model.width, cfg.model.depth, cfg.segment.context)
            if part == "segment"
            else build_model(cfg.model, in_channels=1, num_classes=2)
        )
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        if finetuned and part == "malignancy":
            tuned = list(model.children())[-2:]  # the blocks fine-tuning trains; the rest comes from the classifier
            model.load_state_dict(built["classify"].state_dict())
            with torch.no_grad():
                for p in (p for block in tuned for p in block.parameters()):
                    p.add_(torch.randn_like(p) * 0.1)
        built[part] = model
        (root / part).mkdir(parents=True)
        save_config(cfg, root / part / "config.yaml")
        trained_on = {"spacing_irc_mm": TRAINED_SPACING} if part == "segment" else {}
        save_checkpoint({"model": model.state_dict(), "trained_on": trained_on}, root / part / "best.pt")
    return root


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """(data folder, run folder) exported as `train detector` exports it (onnx and the int8 U-Net), checked on one scan."""
    from noduleflow.export import export_run

    base = tmp_path_factory.mktemp("export")
    data = base / "data"
    synthesize(data, scans=2, seed=2, size="small", scale=0.5, progress=False)
    run = make_run(base / "run", data)
    export_run(run, formats=("onnx", "int8"), scans=1)
    return data, run


@pytest.fixture(scope="session")
def joint_run(exported_run, tmp_path_factory):
    """(data folder, run folder) whose malignancy model is fine-tuned from its classifier, exported as
    `train detector` exports it: with joint.onnx."""
    from noduleflow.export import export_run

    data, _ = exported_run
    run = make_run(tmp_path_factory.mktemp("joint") / "run", data, finetuned=True)
    export_run(run, formats=("onnx", "int8"), scans=1)
    return data, run
