"""`train(cfg)`: one training run from a resolved config to a run folder; what `noduleflow train` calls.

Order matters for reproducibility: seed -> build task (model init) -> wrap -> optimizer and
scheduler -> (resume: restore every state, RNG last) -> fit -> test best.pt. Under torchrun every
rank runs this same function; only rank 0 writes into the run folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noduleflow.config import OptimConfig, TrainConfig, save_config
from noduleflow.errors import CheckpointError, NoduleflowError
from noduleflow.files import atomic_write, output_error, writable_dir
from noduleflow.metrics.classification import describe_metrics
from noduleflow.train.checkpoint import freeze_blocks, init_from_checkpoint, load_checkpoint, load_model_state
from noduleflow.train.distributed import barrier, init_distributed, resolve_device
from noduleflow.train.host import configure_host
from noduleflow.train.tasks import build_task
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import wrap_model


@dataclass(frozen=True)
class RunResult:
    """Where the run lives, its best validation epoch (see `Trainer.fit`), test metrics of best.pt, wall time in s."""

    run_dir: Path
    best: dict[str, Any]
    test: dict[str, float] | None
    seconds: float

    def describe(self) -> str:
        """Two or three lines for the terminal."""
        lines = [
            f"run {self.run_dir}: {self.best['epochs']} epochs, {self.best['steps']} steps in {self.seconds:.1f} s"
            + (" (stopped early)" if self.best["stopped_early"] else ""),
            "best "
            + ", ".join(
                (f"{k} {v:.4f}" if math.isfinite(v) else f"{k} n/a") if isinstance(v, float) else f"{k} {v}"
                for k, v in self.best.items()
                if k not in ("epochs", "steps", "stopped_early")
            ),
        ]
        if self.test is not None:
            lines.append("test " + describe_metrics(self.test, where="the test split"))  # no `nan` for people
        return "\n".join(lines)


def train(cfg: TrainConfig, *, resume: bool = False, until_epoch: int | None = None) -> RunResult:
    """Train `cfg` into `runs_dir/<name>/`; `resume` continues from its last.pt (see `resolve_config`).

    until_epoch: stop after this epoch although `run.epochs` is larger (a time-sliced job, or a
    test of resume); the schedule still spans `run.epochs`, and `resume` picks up from there.
    """
    start = time.perf_counter()
    device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    configure_host(device, cfg.run.threads)
    dist = init_distributed(device)
    run_dir = cfg.run_dir
    check_run_dir(run_dir, resume=resume)
    barrier()  # every rank has looked before rank 0 creates the folder
    if dist.is_main:
        writable_dir(run_dir)  # a read-only runs folder fails now, not after the first epoch

    _seed_everything(cfg.run.seed)  # identical model init on every rank
    parts = build_task(cfg, dist)
    if cfg.model.init and not resume:
        init_from_checkpoint(parts.model, cfg.model.init, finetune_depth=cfg.model.finetune_depth)
    elif cfg.model.init:
        freeze_blocks(parts.model, cfg.model.finetune_depth)  # as init froze them; weights come from last.pt
    _seed_everything(cfg.run.seed + dist.rank)  # different augmentation and dropout per rank
    wrapped = wrap_model(
        parts.model,
        device=device,
        channels_last=cfg.run.channels_last,
        compile=cfg.run.compile,
        amp=cfg.run.amp,
        dist=dist,
    )
    optimizer = build_optimizer(cfg.optim, wrapped.module)
    steps = cfg.run.epochs * math.ceil(len(parts.train_loader) / cfg.optim.accumulate)
    scheduler = build_scheduler(cfg.optim, optimizer, steps)
    trainer = Trainer(
        wrapped,
        parts.loss_fn,
        optimizer,
        parts.train_loader,
        parts.val_loader,
        config=cfg,
        scheduler=scheduler,
        metrics_fn=parts.metrics_fn,
        run_dir=run_dir,
        dist=dist,
        trained_on=parts.trained_on,
    )
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if resume:
        trainer.resume(run_dir / "last.pt")
    best = trainer.fit(until_epoch=until_epoch)
    barrier()  # best.pt is on disk
    test = None
    if parts.test_loader is not None and (run_dir / "best.pt").is_file():
        load_model_state(wrapped.module, load_checkpoint(run_dir / "best.pt")["model"], run_dir / "best.pt")
        # the operating threshold is chosen on validation and only applied to the test split: an honest F1.
        # best_threshold is set only by metrics that report val_threshold, i.e. that take a threshold.
        threshold = trainer.best_threshold
        test = trainer.evaluate(
            parts.test_loader, partial(parts.metrics_fn, threshold=threshold) if threshold is not None else None
        )
        if dist.is_main:
            path = run_dir / "test_metrics.json"
            try:
                atomic_write(path, json.dumps({"best_epoch": best["best_epoch"], **test}, indent=2) + "\n")
            except OSError as err:
                raise output_error(err, path) from None
    return RunResult(run_dir, best, test, time.perf_counter() - start)


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """A new run must not overwrite an old one; a resumed run needs its last.pt."""
    if resume and not (run_dir / "last.pt").is_file():
        raise CheckpointError(
            "has no last.pt to resume from", path=run_dir, fix="Check --run, or start the run without --resume."
        )
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise NoduleflowError(
            "run folder already exists",
            path=run_dir,
            fix="Pass --resume to continue it, or pick another name with --run NAME.",
        )


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over the parameters that still require gradients (fine-tuning freezes some)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """Per-optimizer-step schedule: cosine decay from `lr` to 0 over `total_steps`, or None.

    A LambdaLR over the closed-form cosine rather than CosineAnnealingLR: its checkpointed state is
    only the step count, so a run resumed with more epochs stretches the remaining decay to the
    new end instead of restoring the old horizon (past which CosineAnnealingLR climbs back up).
    """
    if cfg.scheduler == "cosine":
        total = max(total_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
    return None


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
