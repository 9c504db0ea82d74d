"""export/formats.py keeps the exporters quiet without touching the root logger (STYLE rule 13)."""

import importlib
import logging

import numpy as np
import onnxruntime as ort
import torch

from noduleflow.export.formats import _named_loggers, export_onnx, quantize_onnx

ort_quantize = importlib.import_module(
    "onnxruntime.quantization.quantize"
)  # the module (the package's name is a function)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seen = []

    def emit(self, record):
        self.seen.append((record.name, record.getMessage()))


def test_the_quantizers_root_level_calls_go_to_its_own_logger_and_the_root_is_left_alone():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    records = _Records()
    named = logging.getLogger("onnxruntime.quantization.quantize")
    named.addHandler(records)
    try:
        with _named_loggers("onnxruntime.quantization"):
            ort_quantize.logging.warning("Please consider to run pre-processing")
        assert records.seen == [("onnxruntime.quantization.quantize", "Please consider to run pre-processing")]
        assert ort_quantize.logging is logging  # restored on the way out
        assert (root.handlers, root.level) == (handlers, level)  # no basicConfig, no level change
    finally:
        named.removeHandler(records)


def test_int8_export_runs_and_leaves_the_root_logger_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 1, 16, 16)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    export_onnx(model, x, tmp_path / "m.onnx")
    quantize_onnx(tmp_path / "m.onnx", tmp_path / "m8.onnx", [x.numpy()])
    assert (root.handlers, root.level) == (handlers, level)
    session = ort.InferenceSession(str(tmp_path / "m8.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = model(x).detach().numpy()
    assert got.shape == (2, 2, 16, 16)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # int8: close to float, not equal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m8.onnx"]
