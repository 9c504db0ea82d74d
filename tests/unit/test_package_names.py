"""The top-level API: every name in `noduleflow.__all__` resolves to the object of its home module, lazily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import noduleflow

SRC = str(Path(noduleflow.__file__).parents[1])  # the sources under test, not whatever copy the interpreter finds first
HOMES = {
    "read_volume": "noduleflow.ct.io",
    "CtVolume": "noduleflow.ct.volume",
    "Predictor": "noduleflow.detect.predictor",
    "ScanResult": "noduleflow.detect.predictor",
    "synthesize": "noduleflow.synth.generate",
    "train_detector": "noduleflow.recipes.detector",
    "export_run": "noduleflow.export.run",
}
JOBS = {"detect": "DetectSummary", "evaluate": "Evaluation", "train": "RunResult"}  # module -> its job's result


def _after(code: str) -> dict:
    """What a fresh interpreter has loaded after `code`: {"torch": bool, "noduleflow": [modules]}."""
    probe = (
        f"import sys, json\n{code}\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'numpy': 'numpy' in sys.modules,"
        " 'noduleflow': sorted(k for k in sys.modules if k.startswith('noduleflow'))}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_noduleflow_loads_nothing_else():
    loaded = _after("import noduleflow; assert noduleflow.__version__")
    assert loaded == {"torch": False, "numpy": False, "noduleflow": ["noduleflow"]}


def test_the_scan_and_prediction_names_come_without_torch():
    loaded = _after("import noduleflow; noduleflow.read_volume, noduleflow.CtVolume, noduleflow.Predictor")
    assert not loaded["torch"] and "noduleflow.detect.predictor" in loaded["noduleflow"]


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_name_is_its_home_modules_object(name):
    home = sys.modules.get(HOMES[name]) or __import__(HOMES[name], fromlist=[name])
    assert getattr(noduleflow, name) is getattr(home, name)
    namespace: dict = {}
    exec(f"from noduleflow import {name}", namespace)
    assert namespace[name] is getattr(home, name)


@pytest.mark.parametrize(("module", "result"), sorted(JOBS.items()))
def test_whole_jobs_are_the_function_of_their_module(module, result):
    job = getattr(getattr(noduleflow, module), module)  # noduleflow.detect.detect, ...
    assert callable(job) and job.__module__.startswith(f"noduleflow.{module}")
    assert job.__annotations__["return"] in (result, getattr(sys.modules[job.__module__], result))


def test_all_and_dir_list_every_name_and_unknown_names_fail_clearly():
    assert set(noduleflow.__all__) == set(HOMES) | set(JOBS)
    assert set(noduleflow.__all__) <= set(dir(noduleflow)) and "__version__" in dir(noduleflow)
    with pytest.raises(AttributeError, match="no attribute 'Detector'"):
        noduleflow.Detector  # noqa: B018 - the attribute access is what is tested
