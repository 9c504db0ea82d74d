"""`noduleflow detect --runtime onnx|int8` from the exports alone: no torch in the process, the eager findings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import noduleflow
from noduleflow.ct import read_volume
from noduleflow.detect import Predictor
from noduleflow.detect.pipeline import scan_sources

SRC = str(Path(noduleflow.__file__).parents[1])
# torch blocked before noduleflow is imported: any `import torch` on the way raises ImportError
_NO_TORCH = """
import sys
sys.modules["torch"] = None
from noduleflow.cli import main
sys.argv = ["noduleflow", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    assert not stop.code, f"exit status {stop.code}"
loaded = [name for name, module in sys.modules.items() if module is not None]
assert "torch" not in loaded and not [m for m in loaded if m.startswith("noduleflow.train")], loaded
print("no torch")
"""


def _detect_without_torch(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "detect", *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("runtime", ["onnx", "int8"])
def test_detect_from_the_exports_runs_without_torch_and_finds_what_eager_finds(exported_run, tmp_path, runtime):
    data, run = exported_run
    scan = scan_sources(data)[0]
    out = tmp_path / runtime
    assert "no torch" in _detect_without_torch(
        str(scan),
        "--run",
        str(run),
        "-o",
        str(out),
        "--runtime",
        runtime,
        "--max-candidates",
        "10",
        "--rank-candidates",
        "10",
    )  # the 10 most confident components alone: an untrained classifier ties, and rounding would choose among more
    [doc] = json.loads((out / "detections.json").read_text())["scans"]
    exported = doc["findings"]
    eager = [
        f.to_dict()
        for f in Predictor.from_run(run, runtime="torch", max_candidates=10, rank_candidates=10)
        .predict(read_volume(scan))
        .findings
    ]
    assert len(eager) == 10  # the untrained U-Net marks plenty: a real comparison
    if runtime == "onnx":  # float32: the same findings, to rounding
        assert len(exported) == len(eager)
        for a, b in zip(exported, eager):
            np.testing.assert_allclose(
                [a[k] for k in ("coordX", "coordY", "coordZ")],
                [b[k] for k in ("coordX", "coordY", "coordZ")],
                atol=1e-3,
            )
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
            assert a["malignancy"] == pytest.approx(b["malignancy"], abs=1e-4)
    else:  # int8 U-Net: most candidates the same, scores close
        near = [
            min(
                np.linalg.norm(
                    np.subtract([a["coordX"], a["coordY"], a["coordZ"]], [b["coordX"], b["coordY"], b["coordZ"]])
                )
                for b in eager
            )
            for a in exported
        ]
        assert len(exported) == 10 and np.mean(np.less(near, 2.0)) >= 0.5


def test_auto_runs_the_int8_unet_and_the_torch_classifiers_with_threads_per_session(exported_run, monkeypatch):
    """auto: each model where it runs fastest, the U-Net from its int8 export, the 3D classifiers in torch
    (float32 on a CPU without native bfloat16, which this test stands in for)."""
    from noduleflow.detect.models import TorchNet

    monkeypatch.setattr("noduleflow.train.wrap.cpu_has_native_bf16", lambda: False)
    data, run = exported_run
    predictor = Predictor.from_run(run, threads=1)
    assert predictor.runtime == "int8+torch"
    assert predictor.nets.segment.session.get_session_options().intra_op_num_threads == 1
    assert isinstance(predictor.nets.classify, TorchNet) and isinstance(predictor.nets.malignancy, TorchNet)
    assert predictor.nets.files["segment"].endswith("segment.int8.onnx")
    assert predictor.nets.files["classify"].endswith("classify/best.pt")
    assert predictor.patch_size() == (8, 16, 16) and predictor.multiple == 4
    patches = np.random.default_rng(0).uniform(-1000, 400, (3, 8, 16, 16)).astype(np.float32)
    nodule, malignant = predictor.classify_patches(patches)
    assert nodule.shape == malignant.shape == (3,) and np.all((0 <= nodule) & (nodule <= 1))
    exported = Predictor.from_run(run, runtime="int8")  # the same weights under ONNX Runtime: the same scores
    for ours, theirs in zip((nodule, malignant), exported.classify_patches(patches), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    volume = read_volume(scan_sources(data)[0])
    a, b = predictor.predict(volume), exported.predict(volume)
    assert a.candidates == b.candidates and [f.center_irc for f in a.findings] == [f.center_irc for f in b.findings]


def test_auto_runs_the_classifiers_in_bf16_where_the_cpu_computes_it_natively(exported_run, monkeypatch):
    monkeypatch.setattr("noduleflow.train.wrap.cpu_has_native_bf16", lambda: True)
    data, run = exported_run
    predictor = Predictor.from_run(run, threads=1)
    assert predictor.runtime == "int8+torch-bf16"
    assert predictor.nets.classify.bf16 and predictor.nets.malignancy.bf16
    patches = np.random.default_rng(0).uniform(-1000, 400, (16, 8, 16, 16)).astype(np.float32)
    exact = Predictor.from_run(run, runtime="torch", threads=1)  # float32 PyTorch
    assert not exact.nets.classify.bf16
    for ours, theirs in zip(predictor.classify_patches(patches), exact.classify_patches(patches), strict=True):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=0.02)  # bfloat16 keeps 8 bits of mantissa
        assert np.corrcoef(ours, theirs)[0, 1] > 0.99


def test_the_export_folder_alone_is_enough_to_detect(exported_run, tmp_path):
    """A server can ship RUN/export/ without the checkpoints, configs or training data."""
    import shutil

    data, run = exported_run
    shipped = tmp_path / "shipped"
    shutil.copytree(run / "export", shipped / "export")
    volume = read_volume(scan_sources(data)[0])
    alone = Predictor.from_run(shipped, max_candidates=5).predict(volume)
    full = Predictor.from_run(run, runtime="int8", max_candidates=5).predict(volume)
    assert [f.to_dict() for f in alone.findings] == [f.to_dict() for f in full.findings] and len(alone.findings) == 5
