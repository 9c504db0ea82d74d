"""Inference stands on its own: the detection package loads no training code, and its torch-free path no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import noduleflow

SRC = str(Path(noduleflow.__file__).parents[1])  # the sources under test, not whatever copy the interpreter finds first


def _loaded(*modules: str) -> list[str]:
    """The noduleflow.* and torch modules a fresh interpreter holds after importing `modules`."""
    code = (
        f"import sys, json\nfor m in {list(modules)!r}: __import__(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith(('noduleflow', 'torch')))))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_detection_package_loads_neither_training_code_nor_torch():
    loaded = _loaded(
        "noduleflow.detect",
        "noduleflow.detect.predictor",
        "noduleflow.detect.pipeline",
        "noduleflow.detect.runtime",
        "noduleflow.detect.windows",
        "noduleflow.export.manifest",
    )
    assert not [m for m in loaded if m.startswith("noduleflow.train")]
    assert "torch" not in loaded


@pytest.mark.parametrize("module", ["noduleflow.cli", "noduleflow.ct", "noduleflow.data.patches"])
def test_the_command_line_and_the_readers_import_without_torch(module):
    assert "torch" not in _loaded(module)


def test_loading_eager_models_needs_torch_but_not_the_trainer():
    loaded = _loaded("noduleflow.detect.models")
    assert "torch" in loaded and not [m for m in loaded if m.startswith("noduleflow.train")]
