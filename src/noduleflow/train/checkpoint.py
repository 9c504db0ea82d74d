"""Checkpoints: atomic writes, weights_only reads, RNG capture, and fine-tuning initialisation.

A checkpoint is a dict of tensors and plain containers only (no pickled classes), so it loads
with `torch.load(path, weights_only=True)`: numpy's RNG state becomes a tensor and ints, Python's
a list, the config a nested dict. Files are written to a temporary name in the same folder,
fsynced, then `os.replace`d: a crash leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from noduleflow.errors import CheckpointError, OutputError
from noduleflow.files import atomic_open, is_torch_write_failure, output_error
from noduleflow.models.weights import FORMAT, load_model_state
from noduleflow.models.weights import read_checkpoint as load_checkpoint

"""Checkpoint layout version, stored under "format"."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` to `path` atomically (`noduleflow.files.atomic_open`: temp file, fsync, rename).

    A write that fails (full disk, permissions) leaves the previous file as it was and no temporary
    file, and raises `OutputError` naming `path`. torch reports a full disk as a RuntimeError
    ("PytorchStreamWriter failed writing file", "unexpected pos") rather than an OSError: both become it.
    """
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
    except OSError as err:
        raise _unwritten(output_error(err, path), path) from None
    except RuntimeError as err:
        if not is_torch_write_failure(err):
            raise
        raise _unwritten(output_error(OSError(errno.ENOSPC, "write failed", str(path)), path), path) from None
    return path


def _unwritten(err: OutputError, path: Path) -> OutputError:
    """`err` with what a user of a run folder needs: the previous checkpoint is whole, and how to go on."""
    keep = f"The previous {path.name} (if any) is unchanged: once there is room, continue with --resume."
    return OutputError(err.what, path=err.path, fix=f"{err.fix} {keep}")


def resolve_checkpoint(source: str | Path, name: str = "best.pt") -> Path:
    """A run folder (-> its `name`, default best.pt) or a checkpoint file -> the file's path."""
    source = Path(source)
    return source / name if source.is_dir() else source


def rng_state() -> dict[str, Any]:
    """The process's torch, CUDA, numpy and Python RNG states as tensors and lists (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_from_checkpoint(module: nn.Module, source: str | Path, *, finetune_depth: int) -> Path:
    """Fine-tuning start: load the weights of `source` (run folder -> best.pt) into all but the head,
    then freeze every top-level block except the last `finetune_depth` (0 keeps everything trainable).

    The head (last top-level child with parameters) starts fresh because the new task's classes
    mean something else (nodule vs. not -> malignant vs. benign). Returns the file that was read.
    """
    path = resolve_checkpoint(source)
    payload = load_checkpoint(path)
    head = parameter_blocks(module)[-1]
    body = {k: v for k, v in payload["model"].items() if k.split(".")[0] != head}
    load_model_state(module, body, path, strict=False)
    missing = [k for k in module.state_dict() if k.split(".")[0] != head and k not in body]
    if missing:
        raise CheckpointError(
            f"weights do not fit model {type(module).__name__} (missing {missing[0]})",
            path=path,
            fix="Initialise from a run of the same architecture (model name, width, depth).",
        )
    freeze_blocks(module, finetune_depth)
    return path


def parameter_blocks(module: nn.Module) -> list[str]:
    """Names of the top-level children that hold parameters, input side first, head last."""
    return [name for name, child in module.named_children() if any(True for _ in child.parameters())]


def freeze_blocks(module: nn.Module, depth: int) -> None:
    """Keep only the last `depth` parameter blocks trainable (`requires_grad`); 0 leaves all trainable."""
    if depth:
        trainable = set(parameter_blocks(module)[-depth:])
        for name, child in module.named_children():
            child.requires_grad_(name in trainable)


def freeze_batchnorm_statistics(module: nn.Module) -> None:
    """Put every batch norm whose weights are frozen into eval mode; call after `module.train()`.

    Frozen weights are not enough: in train mode a batch norm normalises with the batch's statistics
    and overwrites its running mean and variance, so a "frozen" block would still drift away from the
    features the head was fine-tuned on (and from what the source run learned).
    """
    for m in module.modules():
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.affine
            and not any(p.requires_grad for p in m.parameters())
        ):
            m.eval()
