"""Exporting a detector run's models: ONNX (dynamo exporter), int8 ONNX (onnxruntime quantization) and
`torch.export` .pt2 files, each checked against the eager model on real inputs, listed with their input
contracts and checksums in RUN/export/manifest.json (`export.manifest`).

`export_run(RUN, formats=...)` is what `noduleflow export RUN` and `noduleflow train detector` call.
Names load on first use (PEP 562): the ONNX runtime reads `export.manifest` without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "export_run": "run",
    "ExportSummary": "run",
    "ExportError": "parity",
    "TOLERANCES": "parity",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
}
__all__ = ["TOLERANCES", "ExportError", "ExportSummary", "export_run", "read_manifest", "write_manifest"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'noduleflow.export' has no attribute {name!r}")
    return getattr(import_module(f"noduleflow.export.{_EXPORTS[name]}"), name)
