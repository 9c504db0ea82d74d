"""wrap_model: memory format, AMP policy and its CPU detection."""

from pathlib import Path

import pytest
import torch

from noduleflow.errors import ConfigError
from noduleflow.models import create_model
from noduleflow.train.wrap import cpu_has_native_bf16, resolve_amp, wrap_model

CPU = torch.device("cpu")


def test_auto_uses_channels_last_3d_for_3d_nets_on_cpu():
    wrapped = wrap_model(create_model("nodule_classifier", width=4), device=CPU)
    conv = wrapped.module.block1[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = wrapped.policy.to_device(torch.randn(2, 1, 32, 48, 48))
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    labels = wrapped.policy.to_device(torch.tensor([0, 1]))
    assert labels.is_contiguous()


def test_auto_leaves_2d_nets_alone_and_on_forces_channels_last():
    assert wrap_model(create_model("digits_cnn"), device=CPU).policy.memory_format == torch.contiguous_format
    wrapped = wrap_model(create_model("digits_cnn"), device=CPU, channels_last="on")
    assert wrapped.policy.to_device(torch.randn(2, 1, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert (
        wrap_model(create_model("nodule_classifier", width=4), device=CPU, channels_last="off").policy.memory_format
        == torch.contiguous_format
    )


def test_channels_last_does_not_change_the_output():
    torch.manual_seed(0)
    model = create_model("nodule_classifier", width=4).eval()
    x = torch.randn(2, 1, 32, 48, 48)
    expected = model(x)
    wrapped = wrap_model(model, device=CPU, channels_last="on")
    torch.testing.assert_close(wrapped.eval_model(wrapped.policy.to_device(x)), expected, rtol=1e-4, atol=1e-5)


def test_amp_policy_on_cpu():
    if Path("/proc/cpuinfo").exists():  # Linux: the kernel's CPU flags and torch's probes agree
        flags = set(Path("/proc/cpuinfo").read_text().split())
        assert cpu_has_native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})
    assert resolve_amp("auto", CPU) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_amp("off", CPU) is None
    assert resolve_amp("bf16", CPU) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        resolve_amp("fp16", CPU)


def test_bf16_autocast_runs_the_model_in_bf16():
    wrapped = wrap_model(torch.nn.Linear(4, 2), device=CPU, amp="bf16")
    with wrapped.policy.autocast():
        assert wrapped.train_model(torch.randn(3, 4)).dtype == torch.bfloat16
    assert wrapped.scaler is None
