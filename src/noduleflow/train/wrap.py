"""The one place where speed and scale policies meet a built model: memory format, compile, AMP, DDP.

Models stay plain single-device modules; `wrap_model` returns a `WrappedModel` holding
    module:     the plain model on its device (its state_dict is what checkpoints store),
    train_model: what the training step calls (DDP and/or compiled around `module`),
    eval_model:  what evaluation calls (compiled when asked, never DDP: evaluation shards need no sync),
and an `ExecPolicy` that moves batches to the device in the model's memory format and opens the
autocast context. On a CPU without native bf16, channels_last_3d makes the 3D nodule classifier
faster while bf16 autocast makes it much slower (docs/decisions.md, 2026-11-29), so 'auto' turns bf16
on only for CUDA and for CPUs with native bf16 (AMX or AVX512-BF16). Native is not always right: on an AMD
EPYC with AVX512-BF16 and no AMX, PyTorch 2.13's bf16 weight gradient of a 3D convolution over 2 slices came
out as garbage (the classifier's last stage; docs/decisions.md, 2026-12-07), so the `Trainer` checks each layer's
gradients on its first batch (`bf16_gradient_errors`) and runs the layers they disagree on in float32
(`run_in_float32`), the rest in bf16.
"""

from __future__ import annotations

import contextlib
import copy
import math
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


BF16_GRADIENT_TOLERANCE = 0.05  # max |bf16 - fp32| over max |fp32|; sound kernels differ by about 0.005
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def bf16_gradient_errors(
    model: nn.Module, x: torch.Tensor, *, tolerance: float = BF16_GRADIENT_TOLERANCE
) -> dict[str, float]:
    """{layer: relative error} of the convolutions and linear layers of `model` whose gradients (of the weight,
    bias and input) under bf16 autocast differ from float32's by more than `tolerance` (relative to the largest
    float32 value; inf where not finite), each layer checked alone on the input it gets from the batch `x`, so
    that bf16's rounding does not compound through the net. Runs on a copy of `model` in eval mode: the model,
    its batch-norm statistics and the random streams are left as they were."""
    probe = copy.deepcopy(model).eval()
    layers = {name: m for name, m in probe.named_modules() if isinstance(m, _WEIGHTED)}
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(_module: nn.Module, args: tuple, _output) -> None:
            inputs.setdefault(name, args[0].detach())

        return hook

    hooks = [m.register_forward_hook(keep_input(name)) for name, m in layers.items()]
    with torch.no_grad():
        probe(x)
    for hook in hooks:
        hook.remove()
    generator = torch.Generator(device=x.device).manual_seed(0)
    errors = {}
    for name, layer in layers.items():
        if name not in inputs or not inputs[name].is_floating_point():
            continue
        upstream = None
        grads = []
        for enabled in (False, True):
            layer.zero_grad(set_to_none=True)
            inp = inputs[name].clone().requires_grad_(True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled):
                out = layer(inp).float()
            if upstream is None:
                upstream = torch.randn(out.shape, generator=generator, device=out.device)
            out.backward(upstream)
            grads.append(
                [t.detach().float().clone() for t in (inp.grad, *(p.grad for p in layer.parameters())) if t is not None]
            )
        error = 0.0
        for ref, got in zip(*grads):
            scale = float(ref.abs().max())
            if scale > 0:
                error = max(error, float((got - ref).abs().max()) / scale if torch.isfinite(got).all() else math.inf)
        if not error <= tolerance:
            errors[name] = error
    return errors


def run_in_float32(model: nn.Module, names) -> None:
    """Make the named submodules of `model` compute in float32 under autocast (their inputs cast up, autocast off
    inside them); their weights, state_dict and outputs' shapes are unchanged."""
    for name in names:
        layer = model.get_submodule(name)
        forward = layer.forward

        def float32_forward(x: torch.Tensor, *args, _forward=forward, **kwargs):
            with torch.autocast(x.device.type, enabled=False):
                return _forward(x.float(), *args, **kwargs)

        layer.forward = float32_forward
