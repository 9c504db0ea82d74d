"""Detection: segment -> group -> classify -> malignancy, over whole scans.

`Predictor.from_run("runs/detector").predict(volume)` for one `CtVolume`; `detect(SOURCE, RUN, OUT)`
for files and folders (what `noduleflow detect` calls). Training a detector lives in
`noduleflow.recipes`; exporting its models in `noduleflow.export`.

Names load on first use (PEP 562), and nothing here imports `noduleflow.train`: with the exported
runtimes (`Predictor.from_run(run, runtime="onnx")`) detection runs without torch; only
`DetectorModels` / `load_detector` (the eager models) import it.
"""

from importlib import import_module

_EXPORTS = {
    "DetectorModels": "models",
    "load_detector": "models",
    "DetectSummary": "pipeline",
    "detect": "pipeline",
    "write_results": "pipeline",
    "Finding": "predictor",
    "Predictor": "predictor",
    "ScanResult": "predictor",
}
__all__ = [
    "DetectSummary",
    "DetectorModels",
    "Finding",
    "Predictor",
    "ScanResult",
    "detect",
    "load_detector",
    "write_results",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'noduleflow.detect' has no attribute {name!r}")
    return getattr(import_module(f"noduleflow.detect.{_EXPORTS[name]}"), name)
