"""The segmentation U-Net under ONNX Runtime: the eager model's logits, sooner on a CPU.

Measured on this project's 2-core CPU with a width-8 U-Net, batch norm folded: 8 slices of
7 x 160 x 112 took 48 ms in eager PyTorch (channels_last) and 33 ms in ONNX Runtime 1.32, whose
graph optimiser fuses each convolution with its ReLU; 8 x 7 x 96 x 64 took 14.4 and 11.6 ms.
Logits agree to about 1e-5.

The model is exported once with the torch.onnx (dynamo) exporter, with the batch, height and width
dynamic (height and width multiples of the U-Net's 2**(depth - 1), as `detect.windows` cuts them),
and kept beside its checkpoint (`ONNX_NAME` in the segment run folder), so later runs only load
it (about 0.1 s instead of about 10 s). A file older than best.pt is exported again; where the
folder cannot be written, the export lives in a temporary folder for this process only.

`train detector` also writes an int8 version (`quantize_unet`, INT8_NAME), calibrated on lung windows
of a few training scans; `detect` uses it when present and up to date. On the bench's width-16 U-Net
its probabilities differ from float32 by 1e-5 on average (at most 0.74 at a few voxels on a component's
edge), the held-out CPM was the same to four decimals, and a scan took 1.0 instead of 1.2 s.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

ONNX_NAME = "best.onnx"  # beside best.pt in the segment run folder
INT8_NAME = "best.int8.onnx"  # its int8 version (quantize_unet), written by `train detector`


class OnnxModel:
    """An exported model run by onnxruntime; called like the module it came from: (B, C, H, W) tensor -> logits tensor."""

    def __init__(self, path: str | Path, *, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers on the user's terminal
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def export_unet(model: torch.nn.Module, path: str | Path, *, in_channels: int, multiple: int) -> Path:
    """Write `model` ((B, in_channels, H, W) -> logits, H and W multiples of `multiple`) to `path` as ONNX, atomically."""
    path = Path(path)
    example = torch.zeros(2, in_channels, 8 * multiple, 8 * multiple)
    batch, rows, cols = torch.export.Dim("batch"), torch.export.Dim("rows", max=8192), torch.export.Dim("cols", max=8192)
    name = next(iter(inspect.signature(model.forward).parameters))  # dynamic_shapes is keyed by forward's argument
    shapes = {name: {0: batch, 2: multiple * rows, 3: multiple * cols}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.inference_mode(False), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress lines and notes are not for the user of `detect`
            program = torch.onnx.export(model.eval(), (example,), dynamo=True, dynamic_shapes=shapes, external_data=False,
                                        verbose=False)
        program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path


def onnx_unet(model: torch.nn.Module, checkpoint: str | Path | None, *, in_channels: int, multiple: int,
              threads: int = 0) -> OnnxModel:
    """`model` under onnxruntime, from the export beside `checkpoint` (best.pt), made first when missing or older."""
    def exported(path: Path) -> OnnxModel:
        return OnnxModel(export_unet(model, path, in_channels=in_channels, multiple=multiple), threads=threads)

    if (ready := fresh_export(checkpoint, ONNX_NAME)) is not None:
        return OnnxModel(ready, threads=threads)
    if checkpoint is not None:
        try:
            return exported(Path(checkpoint).with_name(ONNX_NAME))
        except OSError:
            pass  # a read-only run folder: export for this process only
    with tempfile.TemporaryDirectory() as folder:  # the session holds the model in memory once created
        return exported(Path(folder) / ONNX_NAME)


def fresh_export(checkpoint: str | Path | None, name: str = INT8_NAME) -> Path | None:
    """The export `name` beside `checkpoint` when it exists and is not older than the checkpoint, else None."""
    if checkpoint is None:
        return None
    checkpoint = Path(checkpoint)
    target = checkpoint.with_name(name)
    if target.is_file() and (not checkpoint.is_file() or target.stat().st_mtime >= checkpoint.stat().st_mtime):
        return target
    return None


def quantize_unet(source: str | Path, target: str | Path, inputs: Iterable[np.ndarray]) -> Path:
    """Write the int8 version of the ONNX U-Net `source` to `target`, atomically; returns `target`.

    Static quantization with onnxruntime.quantization: weights int8 per output channel, activations uint8
    with ranges calibrated (min-max) on `inputs`, (B, C, H, W) float32 arrays such as the U-Net sees in
    `detect` (lung windows of a few scans). On this project's 2-core AVX2 CPU the width-16 U-Net runs
    about 1.3x faster than in float32 ONNX; the findings it leads to are compared in bench/detect.py.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source), Path(target)
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    feeds = iter([{name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared, tmp = Path(folder) / "prepared.onnx", target.with_name(f".{target.name}.{os.getpid()}.tmp")
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # dynamic H, W: ONNX's own shape inference
                quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
            os.replace(tmp, target)
        finally:
            quiet.setLevel(level)
            tmp.unlink(missing_ok=True)
    return target
