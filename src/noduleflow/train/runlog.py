"""What a run leaves on disk besides checkpoints, and what it shows while it runs.

runs/<name>/
    config.yaml     resolved config (written by `noduleflow.train.run`)
    metrics.jsonl   one JSON object per epoch: epoch, step, lr, train_loss, samples_per_s, val_*
    events.out.*    TensorBoard scalars of the same numbers (`tensorboard --logdir runs`)
    curves.png      loss and validation metrics per epoch, drawn at the end
Only rank 0 of a distributed job owns a `RunLog`; the others pass None to the trainer.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from noduleflow.errors import OutputError
from noduleflow.files import atomic_write, output_error, writable_dir


class RunLog:
    """Keeps metrics.jsonl (rewritten atomically each epoch) and TensorBoard; draws curves.png on `close`."""

    def __init__(self, run_dir: str | Path, *, keep_epochs: int = 0):
        """keep_epochs: on resume, records of later epochs (written after the last checkpoint) are dropped."""
        from torch.utils.tensorboard import SummaryWriter

        self.dir = writable_dir(run_dir)
        self.metrics_path = self.dir / "metrics.jsonl"
        self._records = [r for r in read_metrics(self.metrics_path) if r["epoch"] <= keep_epochs]
        self._write_metrics()
        self._tb = SummaryWriter(log_dir=str(self.dir), purge_step=keep_epochs + 1 if keep_epochs else None)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's numbers; NaN (e.g. AUC with one class present) is written as null."""
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        self._records.append(clean)
        self._write_metrics()
        for key, value in clean.items():
            if key != "epoch" and isinstance(value, (int, float)):
                section = "val" if key.startswith("val_") else "train"
                self._tb.add_scalar(f"{section}/{key.removeprefix('val_')}", value, record["epoch"])
        self._tb.flush()

    def _write_metrics(self) -> None:
        """metrics.jsonl rewritten whole (atomically) rather than appended: a full disk cannot leave half a
        record that a resume would then fail to read."""
        try:
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self._records))
        except OSError as err:
            raise output_error(err, self.metrics_path) from None

    def close(self) -> Path | None:
        """Flush TensorBoard and draw curves.png; returns its path (None before the first epoch, or when it
        cannot be written: a warning then, since `close` runs while an error, e.g. a full disk, may be on its way)."""
        self._tb.close()
        try:
            return plot_curves(self.metrics_path, self.dir / "curves.png")
        except OutputError as err:
            warnings.warn(f"curves.png not drawn: {err.message}", stacklevel=2)
            return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:  # a line cut short by an older version's append on a full disk
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def plot_curves(metrics_path: str | Path, out: str | Path) -> Path | None:
    """Two panels: train/val loss per epoch; val accuracy, F1, best-threshold F1, AP and AUC per epoch (those logged)."""
    records = read_metrics(metrics_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in [
        ("train_loss", loss_ax),
        ("val_loss", loss_ax),
        ("val_accuracy", score_ax),
        ("val_f1", score_ax),
        ("val_f1_best", score_ax),
        ("val_ap", score_ax),
        ("val_auc", score_ax),
    ]:
        logged = [r for r in records if key in r]  # val_* only on validated epochs (run.val_every)
        if not logged:
            continue
        ax.plot(
            [r["epoch"] for r in logged],
            [math.nan if r[key] is None else r[key] for r in logged],
            marker="o",
            label=key,
        )
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    score_ax.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    for ax in (loss_ax, score_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from noduleflow.figures import save_png

    try:
        return save_png(fig, out, dpi=100)
    finally:
        plt.close(fig)


class EpochProgress:
    """A rich progress bar over one epoch's batches with samples/s and the running loss.

    Disabled (a no-op) when `enabled` is False: tests, non-main ranks, `run.progress: false`.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar: Progress | None = None

    def start(self, epoch: int, epochs: int, batches: int) -> None:
        self._samples, self._t0 = 0, time.perf_counter()
        if not self.enabled:
            return
        self._bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.1f} samples/s  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=batches, epoch=f"{epoch}/{epochs}", rate=0.0, loss="-")

    def advance(self, samples: int, loss: float | None = None) -> None:
        """One batch of `samples` done; `loss` (if given) refreshes the shown running loss."""
        self._samples += samples
        if self._bar is not None:
            fields = {"rate": self.rate}
            if loss is not None:
                fields["loss"] = f"{loss:.4f}"
            self._bar.update(self._task, advance=1, **fields)

    @property
    def rate(self) -> float:
        """Samples per second since `start`."""
        return self._samples / max(time.perf_counter() - self._t0, 1e-9)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def report(self, record: dict[str, Any], improved: bool) -> None:
        """Print one line per epoch: train loss, samples/s and the validation metrics (* marks a new best).

        Metrics a validation split without positives leaves undefined read "no positive in validation".
        """
        if not self.enabled:
            return
        from rich import print as rprint

        from noduleflow.metrics.classification import describe_metrics

        vals = describe_metrics(record, prefix="val_")
        rprint(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {record['samples_per_s']:.0f} samples/s | "
            + (
                f"val {vals}{'  [green]* best[/green]' if improved else ''}"
                if vals
                else "not validated (run.val_every)"
            )
        )
