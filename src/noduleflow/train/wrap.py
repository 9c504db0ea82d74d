"""The one place where speed and scale policies meet a built model: memory format, compile, AMP, DDP.

Models stay plain single-device modules; `wrap_model` returns a `WrappedModel` holding
    module:     the plain model on its device (its state_dict is what checkpoints store),
    train_model: what the training step calls (DDP and/or compiled around `module`),
    eval_model:  what evaluation calls (compiled when asked, never DDP: evaluation shards need no sync),
and an `ExecPolicy` that moves batches to the device in the model's memory format and opens the
autocast context. On a CPU without native bf16, channels_last_3d makes the 3D nodule classifier
faster while bf16 autocast makes it much slower (docs/decisions.md, 2026-11-29), so 'auto' turns bf16
on only for CUDA and for CPUs with native bf16 (AMX or AVX512-BF16).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from noduleflow.errors import ConfigError
from noduleflow.train.distributed import DistInfo


@dataclass(frozen=True)
class ExecPolicy:
    """How batches meet the model: device, memory format of 4D/5D inputs, autocast dtype (None: fp32)."""

    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    amp_dtype: torch.dtype | None = None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the device; images (B, C, H, W) / volumes (B, C, D, H, W) take the memory format."""
        layout_fits = x.dim() == {torch.channels_last: 4, torch.channels_last_3d: 5}.get(self.memory_format, -1)
        if layout_fits:
            return x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


@dataclass
class WrappedModel:
    """A model ready to train: see the module docstring for the three views of it."""

    module: nn.Module
    train_model: nn.Module
    eval_model: nn.Module
    policy: ExecPolicy
    scaler: torch.amp.GradScaler | None


def wrap_model(
    model: nn.Module,
    *,
    device: torch.device,
    channels_last: str = "auto",
    compile: bool = False,
    amp: str = "auto",
    dist: DistInfo | None = None,
) -> WrappedModel:
    """Apply, in this order: device + memory format, torch.compile, DDP; choose the AMP policy.

    channels_last: 'auto' (on for 3D conv nets on CPU, where it was measured to pay off), 'on', 'off'.
    amp: 'auto', 'off', 'bf16' or 'fp16' (fp16 only on CUDA; it brings a GradScaler).
    DDP (when `dist.enabled`) averages gradients over processes; on CUDA it pins the local device.
    """
    memory_format = _memory_format(model, device, channels_last)
    model = model.to(device=device, memory_format=memory_format)
    run_model = torch.compile(model) if compile else model
    train_model = run_model
    if dist is not None and dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(run_model, device_ids=ids)
    amp_dtype = resolve_amp(amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return WrappedModel(model, train_model, run_model, ExecPolicy(device, memory_format, amp_dtype), scaler)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto' | 'off' | 'bf16' | 'fp16' -> the autocast dtype, or None for plain fp32."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("run.amp = 'fp16' needs a CUDA device", fix="Use 'bf16', 'off' or 'auto' on CPU.")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX tiles or AVX512-BF16); AVX2-only CPUs emulate it slowly."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)
        if probe is not None and probe():
            return True
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(cpuinfo.read_text(errors="replace").split())
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def _memory_format(model: nn.Module, device: torch.device, channels_last: str) -> torch.memory_format:
    dims = {m.weight.dim() - 2 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))}
    if channels_last == "off" or not dims:
        return torch.contiguous_format
    three_d = 3 in dims
    if channels_last == "auto" and not (three_d and device.type == "cpu"):
        return torch.contiguous_format
    return torch.channels_last_3d if three_d else torch.channels_last
