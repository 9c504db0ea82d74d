"""Writing one model in each export format: ONNX (dynamo exporter), int8 ONNX (static quantization), .pt2.

Every file is written to a temporary name beside its target and renamed, so an interrupted export
leaves the previous file or none. The batch size is dynamic in every format; the U-Net's height and
width are dynamic too, as multiples of its downsampling factor (`detect.windows` cuts windows of
any such size).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from noduleflow.files import atomic_path


def dynamic_shapes(model: torch.nn.Module, example: torch.Tensor, multiple: int | None) -> dict:
    """torch.export's dynamic shapes for `model`'s one input: batch always; height and width (multiples of
    `multiple`) when `multiple` is given (the U-Net)."""
    dims: dict[int, object] = {0: torch.export.Dim("batch", max=4096)}
    if multiple is not None:
        dims[2] = multiple * torch.export.Dim("rows", max=8192 // multiple)
        dims[3] = multiple * torch.export.Dim("cols", max=8192 // multiple)
    name = next(iter(inspect.signature(model.forward).parameters))  # dynamic_shapes is keyed by forward's argument
    return {name: dims}


@contextlib.contextmanager
def _quiet(*loggers: str):
    """The exporters' progress lines, notes and warnings kept off the user's terminal (errors still raise)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


class _NamedLogging:
    """Stands in for the `logging` module inside a library that logs through the root logger (`logging.warning(...)`):
    the same calls, sent to the library module's own named logger, so `_quiet` can silence them and the root
    logger is never touched (a root-level call on a root without handlers would even install one: basicConfig)."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(name)
        for level in ("debug", "info", "warning", "error", "critical", "exception", "log"):
            setattr(self, level, getattr(self._logger, level))

    def __getattr__(self, name: str):
        return getattr(logging, name)  # everything else (levels, getLogger, Handler...) is the real module's


@contextlib.contextmanager
def _named_loggers(package: str):
    """While inside, the loaded modules of `package` that log through the root logger log through their own name."""
    import sys

    patched = [
        (module, module.logging)
        for name, module in list(sys.modules.items())
        if (name == package or name.startswith(package + ".")) and getattr(module, "logging", None) is logging
    ]
    try:
        for module, _ in patched:
            module.logging = _NamedLogging(module.__name__)
        yield
    finally:
        for module, original in patched:
            module.logging = original


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, multiple: int | None = None
) -> Path:
    """Write eval-mode `model` as ONNX (torch.onnx dynamo exporter, one file, weights inside) to `path`, atomically."""
    with torch.inference_mode(False), _quiet("torch.onnx", "torch.export", "onnxscript"):
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=dynamic_shapes(model, example, multiple),
        )
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return Path(path)


def export_pt2(model: torch.nn.Module, example: torch.Tensor, path: str | Path, *, multiple: int | None = None) -> Path:
    """Write eval-mode `model` as a `torch.export` program (.pt2, loaded by `torch.export.load(path).module()`)."""
    with torch.inference_mode(False), _quiet("torch.export"):
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=dynamic_shapes(model, example, multiple))
    with atomic_path(path, suffix=".tmp.pt2") as tmp:  # torch.export.save warns about names not ending in .pt2
        torch.export.save(program, str(tmp))
    return Path(path)


def quantize_onnx(source: str | Path, target: str | Path, inputs: Iterable[np.ndarray]) -> Path:
    """Write the int8 version of the ONNX model `source` to `target`, atomically; returns `target`.

    Static quantization with onnxruntime.quantization: weights int8 per output channel, activations uint8
    with ranges calibrated (min-max) on `inputs`, float32 batches such as the model sees in `detect`
    (for the U-Net: lung windows of a few training scans).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source), Path(target)
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    feeds = iter([{name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        with _quiet("onnxruntime"), _named_loggers("onnxruntime.quantization"), atomic_path(target) as tmp:
            quant_pre_process(
                str(source), str(prepared), skip_symbolic_shape=True
            )  # dynamic sizes: ONNX's own inference
            quantize_static(
                str(prepared),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        return target
