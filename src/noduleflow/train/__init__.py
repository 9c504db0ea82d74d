"""Training: one `Trainer` for every task, checkpoints with exact resume, logging, and `wrap_model`.

Entry point: `train(resolve_config("digits", overrides={"run.epochs": 5}))` writes runs/digits/.
"""

from noduleflow.train.run import RunResult, train
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import WrappedModel, wrap_model

__all__ = ["RunResult", "Trainer", "WrappedModel", "train", "wrap_model"]
