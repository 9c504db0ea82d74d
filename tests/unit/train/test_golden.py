"""Golden losses: the first training steps of tiny fixed-seed runs, pinned in tests/golden/<name>.json.

A change to weight init, augmentation, the loss, the sampler or the loader's order moves these numbers
and fails here, even when every other test (which checks properties, not values) still passes. The
runs go through `noduleflow.train.train`, the path `noduleflow train` takes: config, seeding, task
parts, wrapping, optimizer, schedule, Trainer. One thread, no loader workers, CPU: deterministic.

When a change is meant to move them, regenerate (and say why in the commit):

    PYTHONPATH=src python tests/golden/regenerate.py
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch

from noduleflow.config import resolve_config
from noduleflow.train import run as run_module

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
REGENERATE = "PYTHONPATH=src python tests/golden/regenerate.py"
STEPS = 8  # losses pinned per run: the first optimizer steps, where init, augmentation and order all show
RTOL = 1e-3  # float32 on another CPU may differ in the last digits; a real change moves the losses far more

RUNS = {
    # digits: the CNN, its shift augmentation, shuffled loader order, cross-entropy, AdamW + schedule
    "digits": (
        "digits",
        {
            "data.classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "data.batch_size": 32,
            "data.num_workers": 0,
            "data.augment": True,
            "model.width": 8,
            "run.epochs": 1,
        },
    ),
}


class _Enough(Exception):
    """Raised by the recording loss once it holds STEPS losses: ends the run there."""


def first_losses(name: str, runs_dir: Path) -> list[float]:
    """The per-step training losses of the first STEPS steps of run `name` (RUNS), trained in `runs_dir`."""
    task, overrides = RUNS[name]
    cfg = resolve_config(
        task,
        overrides={
            **overrides,
            "run.runs_dir": str(runs_dir),
            "run.name": name,
            "run.threads": 1,
            "run.progress": False,
        },
    )
    losses: list[float] = []
    build_task = run_module.build_task

    def recording(*args, **kwargs):
        parts = build_task(*args, **kwargs)
        loss_fn = parts.loss_fn

        def loss(outputs, targets):
            if len(losses) == STEPS:
                raise _Enough  # the rest of the epoch (and its evaluation) would only cost time
            value = loss_fn(outputs, targets)
            losses.append(float(value.detach()))
            return value

        parts.loss_fn = loss
        return parts

    threads = torch.get_num_threads()
    try:
        with mock.patch.object(run_module, "build_task", recording), contextlib.suppress(_Enough):
            run_module.train(cfg, until_epoch=1)
    finally:
        torch.set_num_threads(threads)
    return losses


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_first_losses_of_a_fixed_seed_run_are_the_pinned_ones(name, tmp_path):
    path = GOLDEN / f"{name}.json"
    assert path.is_file(), f"{path} is missing: run `{REGENERATE}`"
    pinned = json.loads(path.read_text())
    got = first_losses(name, tmp_path)
    assert len(got) == STEPS and all(math.isfinite(v) for v in got)
    close = [math.isclose(g, p, rel_tol=RTOL) for g, p in zip(got, pinned["losses"])]
    assert all(close) and len(pinned["losses"]) == STEPS, (
        f"the first losses of the '{name}' run moved (init, augmentation, loss or sampling order changed):\n"
        f"  pinned {pinned['losses']}\n  got    {got}\n"
        f"If the change is intended, regenerate with `{REGENERATE}` and say why in the commit."
    )
