"""The fast path of `make_loader` for plain patch datasets: workers write into shared batch slots.

A DataLoader worker normally returns each batch as a new shared-memory tensor. Creating those
pages, and copying into them, costs more than cutting the patches from the memmapped cache (on a
VM about 3 ms per MB). Here a ring of S batch slots, (S, B, 1, D, H, W) float32, is shared with the
workers once; a worker cuts its batch straight into the slot the batch was given, and sends back
only the slot number, labels and indices.

Slots are handed out in the main process: the batch sampler tags each batch with a free slot as
the DataLoader dispatches it, and the loader yields a tensor over that slot's memory (no copy).
The slot turns free again once that tensor and every view of it are garbage (`weakref.finalize`),
so a caller may keep batches as long as it likes; when every slot is busy, the batch is built the
usual way (slot -1). With pin_memory the slot is copied into pinned memory and freed at once.

A pass that stops early leaves slots whose batches never arrive. They are freed once no worker can
write them any more: with persistent workers when the next pass starts (the DataLoader drains the
old batches first), otherwise when the pass's iterator is garbage (its workers have been joined).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from noduleflow.data.patches import hu_to_unit


def ring_loader(dataset, batch_sampler: BatchSampler, batch_size: int, slots: int, **loader_kwargs) -> DataLoader:
    """A DataLoader over a `batchable` patch dataset whose batches are cut into `slots` shared slots."""
    ring = torch.empty((slots, batch_size, 1, *dataset.size), dtype=torch.float32).share_memory_()  # (S, B, 1, D, H, W)
    pool = _SlotPool(slots)
    return _RingLoader(
        _RingPatches(dataset, ring),
        batch_sampler=_SlottedBatches(batch_sampler, pool),
        collate_fn=_as_is,
        **loader_kwargs,
    )


class _SlotPool:
    """Which slots are free; lives in the main process only."""

    def __init__(self, slots: int):
        self.busy = [False] * slots
        self.owner: dict[int, set[int]] = {}  # slot in flight -> the `taken` set of the pass that sent it
        self.latest: set[int] = set()  # the `taken` set of the newest pass

    def new_pass(self) -> set[int]:
        self.latest = set()
        return self.latest

    def take(self, taken: set[int]) -> int:
        """A free slot, now busy and recorded in `taken`; -1 when all are in flight or held by the caller."""
        for slot, busy in enumerate(self.busy):
            if not busy:
                self.busy[slot] = True
                taken.add(slot)
                self.owner[slot] = taken
                return slot
        return -1

    def hand_out(self, slot: int, tensor: torch.Tensor | None) -> None:
        """The caller now holds `tensor` over `slot`; the slot frees itself when the tensor is garbage (None: now)."""
        self.owner.pop(slot).discard(slot)
        if tensor is None:
            self.free(slot)
        else:
            weakref.finalize(tensor, self.free, slot)

    def free(self, slot: int) -> None:
        self.busy[slot] = False

    def release(self, taken: set[int]) -> None:
        """Free the slots of a pass whose remaining batches can no longer be written."""
        for slot in list(taken):
            taken.discard(slot)
            self.owner.pop(slot, None)
            self.free(slot)


class _SlotBatch(list):
    """The indices of one batch, plus its slot (-1: none free, return the patches the usual way)."""

    slot = -1


class _SlottedBatches(Sampler[list]):
    """The batches of `batches`, each tagged with a slot taken from `pool` as it is dispatched."""

    def __init__(self, batches: BatchSampler, pool: _SlotPool):
        self.batches, self.pool = batches, pool

    @property
    def sampler(self) -> Sampler:
        return self.batches.sampler

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[_SlotBatch]:
        return self._tagged(self.pool.new_pass())  # the pass's set exists as soon as the DataLoader calls iter()

    def _tagged(self, taken: set[int]) -> Iterator[_SlotBatch]:
        for indices in self.batches:
            batch = _SlotBatch(indices)
            batch.slot = self.pool.take(taken)
            yield batch


class _RingBatch(NamedTuple):
    """What a worker sends back: the slot (or, for slot -1, the patches), labels and indices.

    numpy, not tensors, for the small arrays: a tensor would travel through a new shared-memory segment.
    """

    slot: int
    size: int
    labels: np.ndarray
    index: np.ndarray
    patches: torch.Tensor | None = None


class _RingPatches(Dataset):
    """Wraps a `batchable` patch dataset: a worker fills one slot per batch with float32 patches."""

    def __init__(self, dataset, ring: torch.Tensor):
        self.dataset, self.ring = dataset, ring
        self._hu = np.empty(dataset.size, dtype=np.int16)  # (D, H, W) scratch, per process

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        """`loader.dataset.records`, `.labels`, ... reach the wrapped dataset."""
        if name.startswith("__") or name in ("dataset", "ring", "_hu"):  # unpickling looks these up before they exist
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, batch: _SlotBatch) -> _RingBatch:
        own = batch.slot < 0
        out = np.empty((len(batch), 1, *self.dataset.size), np.float32) if own else self.ring[batch.slot].numpy()
        for row, index in enumerate(batch):  # out: (B, 1, D, H, W)
            self.dataset.crop_into(index, self._hu)
            hu_to_unit(self._hu, out=out[row, 0])
        index = np.asarray(batch, dtype=np.int64)
        return _RingBatch(
            batch.slot, len(batch), self.dataset.labels[index], index, torch.from_numpy(out) if own else None
        )


class _RingLoader(DataLoader):
    """A DataLoader whose batches are (patches (B, 1, D, H, W) float32, labels (B,) int64, indices (B,) int64)."""

    @property
    def sampler(self) -> Sampler:  # the caller's sampler (for set_epoch), not DataLoader's placeholder
        return self.batch_sampler.sampler

    @sampler.setter
    def sampler(
        self, _value
    ) -> None:  # DataLoader.__init__ assigns a placeholder; the batch sampler holds the real one
        pass

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        pool, ring = self.batch_sampler.pool, self.dataset.ring
        previous = getattr(self, "_previous_pass", None)
        batches = super().__iter__()
        self._previous_pass = taken = pool.latest
        if self.persistent_workers:
            if previous is not None and previous is not taken:
                pool.release(previous)  # the reset inside super().__iter__() drained its batches
        else:
            weakref.finalize(batches, pool.release, taken)  # runs after the iterator's __del__ has joined its workers
        for batch in batches:
            yield self._patches(batch, pool, ring), torch.from_numpy(batch.labels), torch.from_numpy(batch.index)

    def _patches(self, batch: _RingBatch, pool: _SlotPool, ring: torch.Tensor) -> torch.Tensor:
        pin = self.pin_memory and torch.accelerator.is_available()  # as DataLoader decides: no accelerator, no pinning
        if batch.slot < 0:
            return batch.patches.pin_memory() if pin else batch.patches
        if pin:
            patches = ring[batch.slot, : batch.size].pin_memory()
            pool.hand_out(batch.slot, None)
            return patches
        # a tensor of its own (not a view of `ring`), so that the caller's views keep it, and the slot, alive
        patches = torch.empty(0).set_(
            ring.untyped_storage(),
            ring.storage_offset() + batch.slot * ring.stride(0),
            (batch.size, *ring.shape[2:]),
            ring.stride()[1:],
        )
        pool.hand_out(batch.slot, patches)
        return patches


def _as_is(batch):
    return batch
