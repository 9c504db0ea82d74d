"""Reading a run's weights for inference, without the training package (a server carries no trainer).

The one reader of checkpoints: `noduleflow.train.checkpoint` (which writes and resumes them) reads
through it too. It lives here because importing `noduleflow.train` would load the trainer, DDP and
the data ring into a process that only detects.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from noduleflow.errors import CheckpointError

FORMAT = 1  # the checkpoint layout version `noduleflow.train.checkpoint` writes under "format"


def read_checkpoint(path: str | Path) -> dict:
    """The whole payload of the noduleflow checkpoint `path` (CPU tensors: "model" and, for last.pt, what resumes
    training); a missing, damaged or foreign file raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path, fix="Point to a run folder or a .pt file that exists.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        detail = (str(err).splitlines() or ["empty file"])[0][:120]  # some errors (an empty file's) carry no message
        raise CheckpointError(
            f"cannot read checkpoint ({type(err).__name__}: {detail})",
            path=path,
            fix="The file is truncated or not a checkpoint; use last.pt/best.pt of a finished run or retrain.",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(
            "not a noduleflow checkpoint", path=path, fix="Use best.pt or last.pt from a runs/<name>/ folder."
        )
    return payload


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of the noduleflow checkpoint `path` (`read_checkpoint`)."""
    return read_checkpoint(path)["model"]


def load_model_state(
    module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, *, strict: bool = True
) -> None:
    """`module.load_state_dict(state)`, turning missing keys or shape mismatches into `CheckpointError` naming `path`."""
    own = module.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        detail = "; ".join(
            filter(
                None,
                [
                    f"shape {wrong[0]}" if wrong else "",
                    f"missing {missing[0]}" if missing else "",
                    f"unexpected {unexpected[0]}" if unexpected else "",
                ],
            )
        )
        raise CheckpointError(
            f"weights do not fit model {type(module).__name__} ({detail})",
            path=path,
            fix="Use a checkpoint trained with the same model name, width and depth.",
        )
    module.load_state_dict(state, strict=strict)


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights of checkpoint `path` into `module` (strict); a mismatch raises `CheckpointError` naming `path`."""
    load_model_state(module, read_weights(path), path)
    return module
