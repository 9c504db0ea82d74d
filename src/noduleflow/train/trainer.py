"""One `Trainer` for every task: it is handed its collaborators and runs epochs, evaluation and checkpoints.

Collaborators: a `WrappedModel` (see `train.wrap`), a loss function `(logits, targets) -> scalar
mean`, an optimizer, an optional per-step LR scheduler, train/val DataLoaders yielding
`(inputs, targets, *extra)` (a `PatchLoader` is told to augment on the model's device), a metrics
function `(outputs (N, ...), targets (N,)) -> dict`, the run folder (None on non-main ranks or when
nothing should be written) and the `TrainConfig`.

Exact resume: the checkpoint taken after epoch k holds every RNG state (torch, CUDA, numpy,
Python, and the DataLoader/sampler generators, per rank) captured after that epoch's evaluation.
Restoring them right before epoch k+1 replays the same shuffles, augmentations and dropout masks,
so on CPU "2 epochs" and "1 epoch, resume, 1 epoch" end with bitwise-equal weights.

Numbers that are not finite: an optimizer step whose gradients hold NaN or inf is skipped (as a GradScaler
skips fp16's), and an epoch that skips more than `MAX_SKIPPED_SHARE` of its steps stops the run with a
`TrainingError`. Under 'auto' mixed precision on a CPU, each layer's bf16 gradients on the first batch are
checked against float32 ones (`train.wrap.bf16_gradient_errors`), and a layer whose bf16 kernels get them wrong
trains in float32 (`train.wrap.run_in_float32`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from noduleflow.config import TrainConfig, config_to_dict
from noduleflow.errors import CheckpointError, ConfigError, TrainingError
from noduleflow.metrics.classification import classification_metrics
from noduleflow.train.checkpoint import (
    freeze_batchnorm_statistics,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from noduleflow.train.distributed import DistInfo, all_gather_objects
from noduleflow.train.runlog import EpochProgress, RunLog
from noduleflow.train.wrap import WrappedModel, bf16_gradient_errors, run_in_float32

MAX_SKIPPED_SHARE = 0.1  # of an epoch's optimizer steps skipped for non-finite gradients, before the run stops


class Trainer:
    """Trains `model` for `config.run.epochs` epochs, keeping last.pt / best.pt by `config.run.monitor`."""

    def __init__(
        self,
        model: WrappedModel,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        val_loader: DataLoader,
        *,
        config: TrainConfig,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        metrics_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] = classification_metrics,
        run_dir: str | Path | None = None,
        dist: DistInfo = DistInfo(),
        trained_on: dict | None = None,
    ):
        self.trained_on = dict(trained_on or {})  # written into every checkpoint (`TaskParts.trained_on`)
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.train_loader, self.val_loader, self.metrics_fn = train_loader, val_loader, metrics_fn
        self.config, self.dist = config, dist
        self.run_dir = Path(run_dir) if run_dir is not None and dist.is_main else None
        self.monitor, self.lower_is_better = config.run.monitor, config.run.monitor.endswith("loss")
        self.epoch, self.step, self.bad_epochs = 0, 0, 0
        self.skipped_steps = 0  # optimizer steps skipped in the current epoch (gradients not finite)
        self._precision_checked = False
        self.best_value, self.best_epoch = (math.inf if self.lower_is_better else -math.inf), 0
        self.best_threshold: float | None = None  # val_threshold of the best epoch (binary tasks): the operating point
        self.history: list[dict[str, Any]] = []
        self.progress = EpochProgress(config.run.progress and dist.is_main)
        augment_on = getattr(train_loader, "augment_on", None)  # a PatchLoader augments whole batches ...
        if augment_on is not None:
            augment_on(model.policy.device)  # ... on the GPU, where there is one

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train from `self.epoch + 1` to `run.epochs` (or `until_epoch`, or an early stop); returns the best epoch's summary."""
        log = RunLog(self.run_dir, keep_epochs=self.epoch) if self.run_dir is not None else None
        stopped_early = False
        try:
            last = min(self.config.run.epochs, until_epoch or self.config.run.epochs)
            for epoch in range(self.epoch + 1, last + 1):
                record = {"epoch": epoch, **self._train_epoch(epoch)}
                improved = False
                every = self.config.run.val_every
                if epoch == last or (every and epoch % every == 0):
                    record.update({f"val_{k}": v for k, v in self.evaluate(self.val_loader).items()})
                    if self.monitor not in record:
                        raise ConfigError(
                            f"run.monitor = {self.monitor!r} is not a metric of this task",
                            fix=f"Use one of: {', '.join(k for k in record if k.startswith('val_'))}.",
                        )
                    improved = self._update_best(record[self.monitor], epoch)
                    if improved:
                        self.best_threshold = record.get("val_threshold")
                self.epoch = epoch
                self.history.append(record)
                payload = self._checkpoint_payload()  # collective under DDP: every rank must take part
                if log is not None:
                    log.log_epoch(record)
                    save_checkpoint(payload, self.run_dir / "last.pt")
                    if improved:
                        save_checkpoint(payload, self.run_dir / "best.pt")
                self.progress.report(record, improved)
                if self.config.run.patience and self.bad_epochs >= self.config.run.patience:
                    stopped_early = True
                    break
        finally:
            if log is not None:
                log.close()
        return {
            "best_epoch": self.best_epoch,
            self.monitor: self.best_value,
            "epochs": self.epoch,
            "steps": self.step,
            "stopped_early": stopped_early,
        }

    @torch.inference_mode()
    def evaluate(
        self, loader: DataLoader, metrics_fn: Callable[..., dict[str, float]] | None = None
    ) -> dict[str, float]:
        """Mean loss and `metrics_fn` (default: the trainer's) over `loader`, gathered from every rank's shard."""
        model, policy = self.model.eval_model, self.model.policy
        model.eval()
        outputs, targets, loss_sum, count = [], [], 0.0, 0
        for batch in loader:
            x, y = policy.to_device(batch[0]), batch[1].to(policy.device, non_blocking=True)
            with policy.autocast():
                out = model(x)
            out = out.float()
            loss_sum += float(self.loss_fn(out, y)) * len(y)
            count += len(y)
            outputs.append(out.cpu())
            targets.append(y.cpu())
        shards = all_gather_objects((outputs, targets, loss_sum, count))
        all_out = torch.cat([t for shard in shards for t in shard[0]])
        all_y = torch.cat([t for shard in shards for t in shard[1]])
        total = sum(shard[3] for shard in shards)
        return {
            "loss": sum(shard[2] for shard in shards) / max(total, 1),
            **(metrics_fn or self.metrics_fn)(all_out, all_y),
        }

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by `fit`: weights, optimizer, scheduler, counters and RNG."""
        payload = load_checkpoint(path)
        load_model_state(self.model.module, payload["model"], path)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.scheduler is not None and payload["scheduler"] is not None:
                self.scheduler.load_state_dict(payload["scheduler"])
            if self.model.scaler is not None and payload["scaler"] is not None:
                self.model.scaler.load_state_dict(payload["scaler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"optimizer state does not fit ({err})",
                path=path,
                fix="Resume with the run's own config (optimizer and model unchanged).",
            ) from None
        self.epoch, self.step, self.bad_epochs = payload["epoch"], payload["step"], payload["bad_epochs"]
        self.best_value, self.best_epoch = payload["best"]["value"], payload["best"]["epoch"]
        self.best_threshold = payload["best"].get("threshold")
        states = payload["rng"]
        mine = states[self.dist.rank] if len(states) == self.dist.world_size else states[0]
        set_rng_state(mine["process"])
        for gen, state in zip(self._generators(), mine["loaders"]):
            if state is not None:
                gen.set_state(state)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        model, policy, accumulate = self.model.train_model, self.model.policy, self.config.optim.accumulate
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler reshuffles per epoch from seed + epoch
        model.train()
        freeze_batchnorm_statistics(model)  # fine-tuning: frozen blocks keep the statistics they were trained with
        batches = len(self.train_loader)
        loss_sum, samples = torch.zeros((), device=policy.device), 0
        self.progress.start(epoch, self.config.run.epochs, batches)
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps, first_step = 0, self.step
        for i, batch in enumerate(self.train_loader):
            x, y = policy.to_device(batch[0]), batch[1].to(policy.device, non_blocking=True)
            if not self._precision_checked:
                self._check_bf16(x)
            group = min(accumulate, batches - (i - i % accumulate))  # micro-batches in this step
            stepping = i % accumulate == group - 1
            no_sync = isinstance(model, DistributedDataParallel) and not stepping
            with model.no_sync() if no_sync else contextlib.nullcontext():
                with policy.autocast():
                    loss = self.loss_fn(model(x), y)
                scaled = loss / group
                (self.model.scaler.scale(scaled) if self.model.scaler is not None else scaled).backward()
            if stepping:
                self._optimizer_step()
            loss_sum += loss.detach() * len(y)
            samples += len(y)
            self.progress.advance(len(y), loss.item() if self.progress.enabled and i % 10 == 0 else None)
        total = float(
            loss_sum
        )  # waits for the device's queued work, so that the rate counts it (CUDA runs asynchronously)
        rate = self.progress.rate
        self.progress.stop()
        steps = self.step - first_step
        if self.skipped_steps > max(1, MAX_SKIPPED_SHARE * steps):
            raise TrainingError(
                f"{self.skipped_steps} of the {steps} optimizer steps of epoch {epoch} had gradients that are not finite "
                "numbers (NaN or inf), so the weights stopped learning",
                path=self.run_dir,
                fix="Lower optim.lr, clip the gradients (--set optim.grad_clip=1.0), or train in float32 "
                "(--set run.amp=off).",
            )
        shards = all_gather_objects((total, samples, rate))
        record = {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": sum(s[0] for s in shards) / max(sum(s[1] for s in shards), 1),
            "samples_per_s": sum(s[2] for s in shards),
        }
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        return record

    def _check_bf16(self, x: torch.Tensor) -> None:
        """Under run.amp 'auto' on a CPU in bf16: the layers whose bf16 gradients this batch shows wrong
        (`train.wrap.bf16_gradient_errors`) train in float32; an explicit run.amp = 'bf16' is left as asked."""
        self._precision_checked = True
        policy = self.model.policy
        if policy.amp_dtype != torch.bfloat16 or policy.device.type != "cpu" or self.config.run.amp != "auto":
            return
        errors = bf16_gradient_errors(self.model.module, x[:8])
        if errors:
            run_in_float32(self.model.module, errors)
            worst = ", ".join(f"{name} ({error:.3g})" for name, error in list(errors.items())[:3])
            warnings.warn(
                f"this CPU's bf16 kernels get the gradients of {len(errors)} layer(s) wrong (relative error: {worst}); "
                "those layers train in float32, the rest in bf16 (run.amp = 'bf16' trains all in bf16 anyway)",
                stacklevel=2,
            )

    def _optimizer_step(self) -> None:
        scaler, clip = self.model.scaler, self.config.optim.grad_clip
        params = [p for p in self.model.module.parameters() if p.grad is not None]
        if scaler is not None:  # fp16: the GradScaler skips a step with inf or NaN gradients itself
            if clip > 0:
                scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(params, clip)
            scaler.step(self.optimizer)
            scaler.update()
        else:  # one norm serves both the finiteness check and the clipping
            norm = nn.utils.get_total_norm([p.grad for p in params]) if params else None
            if norm is not None and not bool(torch.isfinite(norm)):
                self.skipped_steps += 1  # the schedule keeps its length, as after a GradScaler's skip
            else:
                if clip > 0 and norm is not None:
                    nn.utils.clip_grads_with_norm_(params, clip, norm)
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1

    def _update_best(self, value: float, epoch: int) -> bool:
        better = not math.isnan(value) and (
            value < self.best_value if self.lower_is_better else value > self.best_value
        )
        if better:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    def _generators(self) -> list[torch.Generator]:
        """The train loader's own random generators (loader and sampler), whose states resume must restore."""
        found = [
            getattr(self.train_loader, "generator", None),
            getattr(getattr(self.train_loader, "sampler", None), "generator", None),
        ]
        unique: list[torch.Generator] = []
        for gen in found:
            if isinstance(gen, torch.Generator) and all(gen is not g for g in unique):
                unique.append(gen)
        return unique

    def _checkpoint_payload(self) -> dict[str, Any]:
        states = all_gather_objects({"process": rng_state(), "loaders": [g.get_state() for g in self._generators()]})
        return {
            "model": self.model.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.model.scaler is None else self.model.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "bad_epochs": self.bad_epochs,
            "best": {
                "metric": self.monitor,
                "value": float(self.best_value),
                "epoch": self.best_epoch,
                "threshold": self.best_threshold,
            },
            "rng": states,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.config),
            "trained_on": self.trained_on,
        }
