"""torch.distributed set-up from torchrun's environment, and the few collectives the trainer needs.

`torchrun --nproc_per_node=N -m noduleflow train ...` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init_distributed` reads them and joins the process group (gloo
on CPU, nccl on CUDA). Without them (WORLD_SIZE unset or 1) everything runs single-process and
every helper here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from noduleflow.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank among world_size processes, local_rank on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs and checkpoints."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device; under torchrun 'cuda' means cuda:LOCAL_RANK."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"run.device = {preference!r} but this machine has no CUDA device", fix="Use --device cpu or 'auto'."
        )
    if preference == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes in the environment (idempotent)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not dist.is_initialized():
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed() -> None:
    """Leave the process group, if any (call once at the end of a torchrun job)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable CPU objects); `[obj]` when not distributed."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... of a dataset: disjoint shards, no padding, no shuffle.

    For evaluation: unlike DistributedSampler it never repeats samples to even out the shards,
    so metrics gathered from all ranks count every sample exactly once.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
