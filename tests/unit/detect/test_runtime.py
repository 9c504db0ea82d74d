"""The U-Net under ONNX Runtime: eager logits at any window size, exported once beside its checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from noduleflow.detect.runtime import INT8_NAME, ONNX_NAME, OnnxModel, fresh_export, onnx_unet, quantize_unet
from noduleflow.train.segment_task import CONTEXT, build_unet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = build_unet(4, 3).eval()
    for module in model.modules():  # trained-looking batch-norm statistics, not the identity of a fresh net
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def test_onnx_logits_equal_eager_ones_at_other_sizes_and_the_export_is_reused(unet, tmp_path):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    fast = onnx_unet(unet, checkpoint, in_channels=2 * CONTEXT + 1, multiple=4)
    exported = tmp_path / ONNX_NAME
    assert fast.path == exported and exported.is_file()
    for shape in [(1, 7, 40, 56), (5, 7, 96, 64)]:  # neither is the export's example size
        x = torch.randn(shape)
        with torch.inference_mode():
            expected = unet(x)
        got = fast(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    stamp = exported.stat().st_mtime_ns
    assert onnx_unet(unet, checkpoint, in_channels=7, multiple=4).path == exported
    assert exported.stat().st_mtime_ns == stamp                  # loaded, not exported again
    os.utime(exported, ns=(stamp - 10**10, stamp - 10**10))      # older than a retrained best.pt: stale
    os.utime(checkpoint, ns=(stamp, stamp))
    onnx_unet(unet, checkpoint, in_channels=7, multiple=4)
    assert exported.stat().st_mtime_ns > stamp - 10**10
    assert not list(tmp_path.glob(".*.tmp"))


def test_int8_unet_gives_nearly_the_float_probabilities(unet, tmp_path):
    """Calibrated on inputs like the ones it then sees, int8 probabilities stay within a few hundredths."""
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    source = onnx_unet(unet, checkpoint, in_channels=7, multiple=4).path
    assert fresh_export(checkpoint) is None
    torch.manual_seed(1)
    inputs = [torch.rand(4, 7, 48, 64).numpy() * 2 - 1 for _ in range(8)]
    target = quantize_unet(source, tmp_path / INT8_NAME, inputs)
    assert fresh_export(checkpoint) == target and target.stat().st_size < source.stat().st_size
    x = torch.rand(3, 7, 64, 40) * 2 - 1  # another size than the calibration's
    with torch.inference_mode():
        expected = torch.sigmoid(unet(x)).numpy()
    got = torch.sigmoid(OnnxModel(target)(x)).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 0.02 and np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95
    assert not list(tmp_path.glob(".*.tmp"))
