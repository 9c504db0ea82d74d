"""DataLoaders with seeded workers, and a sampler that balances positives against negatives.

Determinism: `make_loader(..., seed=s)` hands the DataLoader a generator seeded with `s`, from which
it draws the shuffle order and each worker's base seed; `_seed_worker` then seeds Python's and
NumPy's global RNGs from it. Datasets draw their random choices from torch's global RNG, so two
runs with the same seed and worker count give the same batches. (With workers=0 the dataset draws
from this process's global RNG: call torch.manual_seed yourself.)

Patch datasets (`PatchDataset`) are read a batch at a time: the DataLoader hands `__getitems__` a
batch's indices, the patches are cut into one buffer, and the augmentation runs once per batch after
collation: in the worker (or this process) on the CPU, or on the training device once the trainer
calls `PatchLoader.augment_on(device)`. Same samples, same per-sample random transforms as one at a
time, at a fraction of the cost (bench/loader.py). A worker writes the augmented batch straight into
shared memory, so sending it to the main process copies nothing, and sends the labels and indices by value,
so the main process fetches one shared-memory file descriptor per batch instead of three. Patches spanning mm
augmented on the CPU are cut and augmented in one resample (`Augment.batch_from_blocks`): the dataset hands the
collate each batch's source blocks (`MmBlocks`) instead of cut patches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from noduleflow.data.augment import Augment
from noduleflow.data.datasets import MmBlocks
from noduleflow.errors import ConfigError


class BalancedSampler(Sampler[int]):
    """Indices in the order positive, `balance` negatives, positive, ... ("Deep Learning with PyTorch" ch. 12).

    Each epoch (see `set_epoch`) reshuffles the positives and the negatives with (seed, epoch), so
    a long run visits every negative while each batch holds 1 / (balance + 1) positives; positives
    repeat as often as needed. balance=0 is a plain shuffle of all indices.

    labels: (N,) 0/1. num_samples: indices per epoch over all replicas (default N). weights: (N,)
    positive ints, how many times each index stands in its label's pool (a weight-3 negative is
    drawn three times as often as a weight-1 one); default all 1.
    num_replicas / rank: for DDP, as in DistributedSampler (read from torch.distributed when it is
    initialised); each rank gets a contiguous block of the epoch's sequence, which keeps the ratio.
    """

    def __init__(
        self,
        labels: Sequence[int],
        balance: int = 1,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        weights: Sequence[int] | None = None,
    ):
        labels = np.asarray(labels)
        repeats = np.ones(len(labels), np.int64) if weights is None else np.asarray(weights, np.int64)
        if repeats.shape != labels.shape or (repeats < 1).any():
            raise ValueError(f"weights must be {len(labels)} positive integers, one per label")
        self.positives, self.negatives = (np.repeat(np.flatnonzero(labels == c), repeats[labels == c]) for c in (1, 0))
        if balance < 0:
            raise ConfigError(
                f"balance={balance} is negative", fix="Use 0 (no balancing) or a positive negatives-per-positive ratio."
            )
        if balance and (len(self.positives) == 0 or len(self.negatives) == 0):
            raise ConfigError(
                f"balance={balance} needs both labels, but there are {len(self.positives)} positives "
                f"and {len(self.negatives)} negatives",
                fix="Use balance=0, or a split holding scans with and without nodules.",
            )
        if num_replicas is None or rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = (
                num_replicas if num_replicas is not None else (torch.distributed.get_world_size() if dist else 1)
            )
            rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must lie in [0, {num_replicas})")
        self.balance, self.seed, self.epoch = int(balance), int(seed), 0
        self.num_replicas, self.rank = num_replicas, rank
        total = len(labels) if num_samples is None else int(num_samples)
        self.per_rank = math.ceil(total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        slots = np.arange(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)  # this rank's block
        if self.balance == 0:
            order = rng.permutation(np.concatenate([self.positives, self.negatives]))
            return iter(order[slots % len(order)].tolist())
        pos, neg = rng.permutation(self.positives), rng.permutation(self.negatives)
        period = self.balance + 1
        n_pos = slots // period + 1  # positives up to and including this slot
        is_pos = slots % period == 0
        out = np.where(is_pos, pos[(n_pos - 1) % len(pos)], neg[(slots - n_pos) % len(neg)])
        return iter(out.tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler | None = None,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader with seeded, persistent workers; batches are (patches, labels, indices) for patch datasets.

    shuffle: a new order each epoch, the same for the same seed (ignored when `sampler` is given).
    distributed: shard with DistributedSampler (torchrun / DDP) unless `sampler` already shards
    (BalancedSampler does); call `loader.sampler.set_epoch(epoch)` each epoch in both cases.
    pin_memory: defaults to True when CUDA is available (faster host-to-GPU copies).
    A patch dataset (one with `without_transform`, and no collate_fn given) gets a `PatchLoader`: batches
    cut by `__getitems__`, its transform applied to each collated batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is not positive", fix="Use a batch size of 1 or more, e.g. 32.")
    if workers < 0:
        raise ConfigError(
            f"workers={workers} is negative", fix="Use 0 (load in this process) or a positive worker count."
        )
    if sampler is None and distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    prefetch_factor = (prefetch_factor or 2) if workers > 0 else None
    common = dict(
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor,
    )
    order = dict(batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler)
    if hasattr(dataset, "without_transform") and collate_fn is None:
        return PatchLoader(dataset, drop_last=drop_last, **order, **common)
    return DataLoader(dataset, drop_last=drop_last, collate_fn=collate_fn, **order, **common)


class PatchLoader(DataLoader):
    """A DataLoader over a patch dataset whose batches are `(patches, labels, indices)`, augmented as whole batches.

    The DataLoader reads `dataset.without_transform()`; the dataset's transform (`augment`) runs on each
    collated (B, 1, D, H, W) batch: by default inside the collate step (a worker's CPU, or this process
    with workers=0), after `augment_on(device)` with a GPU in this process on that device. Random numbers
    come from torch's RNG of the process that augments (workers: seeded by `make_loader`).
    """

    def __init__(self, dataset, **kwargs):
        self.augment = dataset.transform
        self.augment_device: torch.device | None = None
        if hasattr(self.augment, "warm_up"):
            self.augment.warm_up()  # in this process, before any worker forks: they share what it draws
        super().__init__(dataset.without_transform(), collate_fn=_PatchCollate(self.augment), **kwargs)
        self._defer_mm_cut(self.augment)

    def _defer_mm_cut(self, augment) -> None:
        """Let the collate cut mm patches and augment them in one resample when it augments them on the CPU."""
        if hasattr(self.dataset, "defer_mm_cut"):  # a PatchDataset (it defers only when it cuts mm patches)
            self.dataset.defer_mm_cut = isinstance(augment, Augment) and augment.takes_blocks

    def augment_on(self, device: torch.device | str) -> None:
        """Augment on `device` from now on (call before iterating): a GPU in this process, the CPU in the collate."""
        device = torch.device(device)
        self.augment_device = None if device.type == "cpu" or self.augment is None else device
        self.collate_fn = _PatchCollate(self.augment if self.augment_device is None else None)
        self._defer_mm_cut(self.collate_fn.augment)

    def __iter__(self):
        batches = super().__iter__()
        if self.augment_device is None:
            yield from batches
            return
        for patches, labels, index in batches:
            yield self.augment(patches.to(self.augment_device, non_blocking=True)), labels, index


class _PatchCollate:
    """Collate `PatchBatch`es without a copy (anything else as torch's default), then augment the batch."""

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None):
        self.augment = augment

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        in_worker = get_worker_info() is not None
        if isinstance(batch, MmBlocks) and isinstance(self.augment, Augment):
            labels, index = batch.labels, batch.index
            out = _shared_empty((len(index), 1, *batch.size)) if in_worker else None
            patches = self.augment.batch_from_blocks(batch.blocks, batch.first, batch.step, batch.size, out=out)
            return _SentBatch((patches, labels, index)) if in_worker else (patches, labels, index)
        patches, labels, index = getattr(batch, "collated", None) or default_collate(batch)
        if isinstance(self.augment, Augment) and in_worker:
            # in a worker: the augmented batch is written straight into shared memory, which the main process
            # maps as it is; any other tensor would be copied there when it is sent (2 MB a batch of 32 patches)
            patches = self.augment.batch(patches, out=_shared_empty(patches.shape, patches.dtype))[0]
        elif self.augment is not None:
            patches = self.augment(patches)
        return _SentBatch((patches, labels, index)) if in_worker else (patches, labels, index)


class _SentBatch(tuple):
    """A worker's (patches, labels, indices) that the main process unpickles as a plain tuple of tensors.

    torch's pickler moves every tensor into its own shared-memory file, whose descriptor the main process
    then fetches from the worker over a new socket connection with an authentication handshake, while it
    waits for the busy worker to answer. The labels and indices, (B,) int64 each, travel by value in the
    pickle instead: one such round trip per batch rather than three (measured in docs/decisions.md).
    """

    def __reduce__(self):
        patches, labels, index = self
        return _received, (patches, labels.numpy(), index.numpy())


def _received(patches: torch.Tensor, labels: np.ndarray, index: np.ndarray) -> tuple:
    """The plain (patches, labels, indices) tuple a `_SentBatch` becomes in the receiving process."""
    return patches, torch.from_numpy(labels), torch.from_numpy(index)


def _shared_empty(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor of `shape` and `dtype` in shared memory (as torch's default_collate makes)."""
    like = torch.empty(0, dtype=dtype)
    storage = like.untyped_storage()._new_shared(math.prod(shape) * like.element_size())
    return like.set_(storage).view(tuple(shape))


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's global RNGs from the seed torch gave this worker (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
