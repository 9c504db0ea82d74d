"""Loading helpers of detector runs: batch norm folded into convolutions keeps the outputs; patch sizes in mm are read back."""

from __future__ import annotations

import copy

import torch

from noduleflow.config import resolve_config, save_config
from noduleflow.detect.models import fuse_batchnorm, load_detector
from noduleflow.models.unet import segmentation_unet
from noduleflow.train.checkpoint import save_checkpoint


def test_folding_batchnorm_keeps_the_unet_outputs_and_removes_every_batchnorm():
    torch.manual_seed(0)
    model = segmentation_unet(4, 3, 3)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 7, 32, 32) * 3 + 1)  # running statistics away from 0 / 1
    model.eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 7, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_classifier_trained_on_mm_patches_is_loaded_with_them(tmp_path, monkeypatch):
    """`detect` must cut the patches the classifier was trained on: load_detector reads patch_mm from each part's config."""
    monkeypatch.setattr("noduleflow.detect.models.load_part", lambda sub, part, cfg=None: torch.nn.Identity())
    for part, flags in (("segment", {}), ("classify", {"classify.patch_mm": [32, 40, 40]}), ("malignancy", {})):
        (tmp_path / part).mkdir()
        save_config(resolve_config(part, overrides={"data.root": "d", **flags}), tmp_path / part / "config.yaml")
        (tmp_path / part / "best.pt").write_bytes(b"")
    spacing = [[1.0, 2.0, 3.0], [0.5, 0.7, 0.9], [0.5, 0.7, 0.9]]
    save_checkpoint({"model": {}, "trained_on": {"spacing_irc_mm": spacing}}, tmp_path / "segment" / "best.pt")
    loaded = load_detector(tmp_path)
    assert loaded.patch_mm == {"classify": (32.0, 40.0, 40.0)}
    assert loaded.spacing_mm == ((1.0, 2.0, 3.0), (0.5, 0.7, 0.9), (0.5, 0.7, 0.9))  # what the contract carries


def test_a_classifier_of_another_input_size_is_rebuilt_with_it(tmp_path):
    """model.input_size in the part's config rebuilds the net `detect` loads (its head's size depends on it)."""
    from noduleflow.detect.models import load_part
    from noduleflow.models import build_model, input_size_of
    from noduleflow.train.checkpoint import save_checkpoint  # the trainer's writer: what detect must read

    cfg = resolve_config("classify", overrides={"data.root": "d", "model.input_size": [16, 24, 24]})
    (tmp_path / "classify").mkdir()
    save_config(cfg, tmp_path / "classify" / "config.yaml")
    trained = build_model(cfg.model, in_channels=1, num_classes=2)
    save_checkpoint({"model": trained.state_dict()}, tmp_path / "classify" / "best.pt")
    loaded = load_part(tmp_path / "classify", "classify")
    assert input_size_of(loaded) == (16, 24, 24)
    x = torch.randn(3, 1, 16, 24, 24)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), trained.eval()(x))


def test_the_joint_net_runs_the_shared_blocks_once_and_gives_both_models_logits():
    """Malignancy fine-tuned from the classifier with all but its last 2 blocks frozen: the joint net shares those
    blocks (both architectures), and refuses models that share none or cut other patches."""
    from noduleflow.detect.models import DetectorModels, JointNet, joint_model, shared_blocks
    from noduleflow.models import create_model

    for name, size in (("nodule_net", (16, 32, 32)), ("nodule_classifier", (32, 48, 48))):
        torch.manual_seed(0)
        classify = create_model(name, in_channels=1, num_classes=2, width=2).eval()
        malignancy = copy.deepcopy(classify)
        with torch.no_grad():
            for block in list(malignancy.children())[-2:]:
                for p in block.parameters():
                    p.add_(torch.randn_like(p))
        blocks = len(list(classify.children()))
        assert shared_blocks(classify, malignancy) == blocks - 2 and shared_blocks(classify, classify) == blocks
        joint = joint_model(DetectorModels(torch.nn.Identity(), classify, malignancy, run_dir=None))
        assert isinstance(joint, JointNet) and len(joint.trunk) == blocks - 2
        x = torch.randn(3, 1, *size)
        with torch.inference_mode():
            torch.testing.assert_close(joint(x), torch.cat([classify(x), malignancy(x)], 1), atol=1e-5, rtol=1e-5)
        other = create_model(name, in_channels=1, num_classes=2, width=2).eval()  # trained apart: nothing shared
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.01)
        assert joint_model(DetectorModels(torch.nn.Identity(), classify, other, run_dir=None)) is None
        mm = DetectorModels(
            torch.nn.Identity(), classify, malignancy, run_dir=None, patch_mm={"classify": (24, 24, 24)}
        )
        assert joint_model(mm) is None  # the two cut different patches
