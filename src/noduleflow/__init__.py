"""noduleflow: lung nodule detection in chest CT, from scans on disk to a served model.

The names a notebook or script needs, importable from here:

    import noduleflow
    volume = noduleflow.read_volume("scan.mhd")               # or CtVolume.from_array / .from_sitk
    result = noduleflow.Predictor.from_run("runs/detector").predict(volume)
    result.to_frame()                                         # one row per finding (pandas)

`read_volume`, `CtVolume`, `Predictor`, `ScanResult`, `synthesize`, `train_detector`, `export_run`.
Whole jobs over files and folders live in the module of the same name, as the CLI calls them:
`noduleflow.detect.detect(SOURCE, RUN, OUT)`, `noduleflow.evaluate.evaluate(DATA, SUBMISSION)`,
`noduleflow.train.train(config)` (a function cannot share its name with a module of this package: once
the module is imported, Python binds the name to the module).

Every name loads on first use (PEP 562), so `import noduleflow` imports neither torch nor numpy: the CLI
starts fast, and a torch-free process (the exported runtimes of `Predictor`) stays torch-free.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "read_volume": "noduleflow.ct.io",
    "CtVolume": "noduleflow.ct.volume",
    "Predictor": "noduleflow.detect.predictor",
    "ScanResult": "noduleflow.detect.predictor",
    "synthesize": "noduleflow.synth.generate",
    "train_detector": "noduleflow.recipes.detector",
    "export_run": "noduleflow.export.run",
}
_MODULES = ("detect", "evaluate", "train")  # whose function of the same name runs a whole job (docstring)
__all__ = [*_EXPORTS, *_MODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = import_module(f"noduleflow.{name}")
    else:
        raise AttributeError(f"module 'noduleflow' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
