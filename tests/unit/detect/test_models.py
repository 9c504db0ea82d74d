"""Loading helpers of detector runs: batch norm folded into convolutions keeps the outputs."""

from __future__ import annotations

import copy

import torch

from noduleflow.detect.models import fuse_batchnorm
from noduleflow.train.segment_task import build_unet


def test_folding_batchnorm_keeps_the_unet_outputs_and_removes_every_batchnorm():
    torch.manual_seed(0)
    model = build_unet(4, 3)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 7, 32, 32) * 3 + 1)  # running statistics away from 0 / 1
    model.eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 7, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
