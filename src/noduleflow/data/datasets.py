"""Classification datasets on the scan cache: candidate patches (nodule or not) and malignancy.

A sample is `(patch, label, index)`: patch (1, D, H, W) float32, HU clipped to [-1000, 1000] and
scaled to [-1, 1]; label int64; index int64 into `dataset.records` (series UID, world centre, ...).
Patches are cut from the read-only memmaps of the cache, which each process opens on first use
and keeps open; nothing but the patch's own voxels is read, so a DataLoader worker costs little
memory and the page cache is shared by all of them.

A DataLoader that batches calls `__getitems__` with a batch's indices: the patches are cut straight
into one (B, 1, D, H, W) buffer and the transform runs once on the whole batch. Patches spanning mm
(`size_mm`) are interpolated for the whole batch at once as three batched matrix products (`_cut_mm`),
about 3x faster than `crop_mm` patch by patch; the values agree with `crop_mm` (which inference uses)
to float rounding (~1e-4 HU), not bit for bit. (A training loader that augments mm patches on the CPU
sets `defer_mm_cut` on its copy of the dataset: batches are then `MmBlocks`, the source voxels, which the
augmentation resamples once to augmented patches.) The result is a
`PatchBatch`, a list of per-sample views that torch's default collate stacks into what per-sample
`__getitem__` would give, and whose `collated` tuple `make_loader`'s collate passes on without a copy.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from noduleflow.data.cache import CachedScan, LungMask, ScanCache
from noduleflow.data.luna16 import Candidate, Nodule
from noduleflow.data.patches import crop_box, hu_to_unit

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(patches (B, 1, D, H, W) float32, labels (B,) int64, indices (B,) int64)."""

DEFAULT_PATCH = (32, 48, 48)
"""Patch size in voxels (I, R, C), as in "Deep Learning with PyTorch" ch. 11."""

Transform = Callable[[torch.Tensor], torch.Tensor]


class PatchBatch(list):
    """A batch from `PatchDataset.__getitems__`: B samples (patch, label, index), views of `collated`.

    A list, so that torch's default collate stacks it as it would B separate samples; `make_loader`'s
    collate takes `collated` (a `Batch`) as it is instead.
    """

    def __init__(self, collated: Batch):
        patches, labels, index = collated
        super().__init__(zip(patches, labels, index))
        self.collated = collated


class MmBlocks:
    """A batch of mm patches not yet cut: `PatchDataset.mm_blocks` of its samples, labels and indices.

    `PatchLoader`'s collate cuts and augments them in one resample (`Augment.batch_from_blocks`); `collated`
    cuts them as `PatchDataset.__getitems__` does otherwise (the patches before augmentation).
    """

    def __init__(self, dataset: PatchDataset, index: np.ndarray):
        self.blocks, self.first, self.step = dataset.mm_blocks(index)
        self.size = dataset.size
        self.labels, self.index = torch.from_numpy(dataset.labels[index]), torch.from_numpy(index)
        self._dataset = dataset

    @property
    def collated(self) -> Batch:
        patches = self._dataset._batch(self.index.numpy()).collated[0]
        return patches, self.labels, self.index


class OpenScans:
    """Cache entries opened on first use and kept open, per process.

    Pickling (to a DataLoader worker) drops the open memmaps, so each worker opens its own; a
    handful of lung masks is kept in a small LRU.
    """

    def __init__(self, cache: ScanCache, masks_kept: int = 16):
        self.cache, self.masks_kept = cache, masks_kept
        self._scans: dict[str, CachedScan] = {}
        self._masks: OrderedDict[str, LungMask] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"cache": self.cache, "masks_kept": self.masks_kept, "_scans": {}, "_masks": OrderedDict()}

    def __call__(self, series_uid: str) -> CachedScan:
        scan = self._scans.get(series_uid)
        if scan is None:
            scan = self._scans[series_uid] = self.cache.open(series_uid)
        return scan

    def lung_mask(self, series_uid: str) -> LungMask:
        mask = self._masks.pop(series_uid, None) or self(series_uid).lung_mask()
        self._masks[series_uid] = mask
        while len(self._masks) > self.masks_kept:
            self._masks.popitem(last=False)
        return mask


def locate(scans: OpenScans, records: Sequence[Candidate | Nodule], what: str) -> tuple[np.ndarray, np.ndarray]:
    """World centres -> ((N, 3) float voxel centres, (N,) bool inside the volume).

    Records outside their volume are counted and warned about once: a patch there would be all
    padding, and such rows usually mean a CSV that belongs to other scans.
    """
    centers = np.zeros((len(records), 3), dtype=np.float64)
    inside = np.zeros(len(records), dtype=bool)
    by_series: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_series.setdefault(record.series_uid, []).append(i)
    for uid, rows in by_series.items():
        scan = scans(uid)
        centers[rows] = scan.xyz_to_irc([records[i].center_xyz for i in rows], rounded=False)
        rounded = np.floor(centers[rows] + 0.5)
        inside[rows] = np.all((rounded >= 0) & (rounded < scan.shape), axis=1)
    if not inside.all():
        warnings.warn(
            f"skipped {int((~inside).sum())} {what} whose centre lies outside its scan's volume "
            "(check that the CSV belongs to these scans)",
            stacklevel=3,
        )
    return centers, inside


def _offsets(n: int) -> np.ndarray:
    """(n,) patch voxel positions relative to the patch centre, in patch voxels."""
    return np.arange(n) - (n - 1) / 2


def _source_box(centers_irc: np.ndarray, step: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3) centres and source voxels per patch voxel -> (B, 3) int first voxel and end of each source block.

    The block holds floor(first position) .. floor(last position) + 1, the voxels `crop_mm` reads.
    """
    half = (np.asarray(size) - 1) / 2 * step  # (B, 3)
    return np.floor(centers_irc - half).astype(np.int64), np.floor(centers_irc + half).astype(np.int64) + 2


def _weights(pos: np.ndarray, m: int) -> torch.Tensor:
    """(B, n) positions inside blocks of m voxels -> (B, n, m) float32 rows of linear interpolation weights."""
    below = np.floor(pos)
    frac = (pos - below).astype(np.float32)[..., None]
    below = below.astype(np.int64)[..., None]
    w = np.zeros((*pos.shape, m), dtype=np.float32)
    np.put_along_axis(w, below, 1 - frac, axis=-1)
    np.put_along_axis(w, below + 1, frac, axis=-1)
    return torch.from_numpy(w)


class PatchDataset(Dataset):
    """Fixed-size patches around world points, each with an integer label.

    size: patch voxels (D, H, W) along (I, R, C). size_mm: when given, the patch spans these mm
    (I, R, C order) whatever the scan's spacing and is resampled to `size` voxels.
    transform: augmentation of a (1, D, H, W) sample or a (B, 1, D, H, W) batch (`noduleflow.data.Augment`
    takes both): `__getitem__` applies it per sample, `__getitems__` per batch, and `make_loader` after
    collation (in the worker, or on the training device: `PatchLoader.augment_on`).
    """

    def __init__(
        self,
        cache: ScanCache,
        records: Sequence[Candidate | Nodule],
        labels: Sequence[int],
        *,
        size: Sequence[int] = DEFAULT_PATCH,
        size_mm: Sequence[float] | None = None,
        transform: Transform | None = None,
        what: str = "records",
    ):
        if len(records) != len(labels):
            raise ValueError(f"{len(records)} records but {len(labels)} labels")
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"size must be three positive voxel counts (D, H, W), got {tuple(size)}")
        self.scans = OpenScans(cache)
        self.size = tuple(int(s) for s in size)
        self.size_mm = None if size_mm is None else tuple(float(s) for s in size_mm)
        self.transform = transform
        self.defer_mm_cut = False
        centers, inside = locate(self.scans, records, what)
        self.records = tuple(r for r, keep in zip(records, inside) if keep)
        self.labels = np.asarray(labels, dtype=np.int64)[inside]  # (N,)
        self.centers_irc = centers[inside]  # (N, 3) fractional voxels
        rounded = np.floor(self.centers_irc + 0.5).astype(np.int64)  # (N, 3) centre voxels
        # each patch's first voxel as plain ints: crops run thousands of times a second, numpy scalars cost
        self._corners = [tuple(c) for c in (rounded - np.asarray(self.size) // 2).tolist()]
        if self.size_mm is not None:  # (N, 3) source voxels per patch voxel; the largest source block, per axis
            spacing = np.array([self.scans(r.series_uid).spacing_xyz[::-1] for r in self.records]).reshape(-1, 3)
            self._step = np.asarray(self.size_mm) / np.asarray(self.size) / spacing
            lo, hi = _source_box(self.centers_irc, self._step, self.size)
            self._block = tuple(int(b) for b in (hi - lo).max(0)) if len(self.records) else (2, 2, 2)

    def __len__(self) -> int:
        return len(self.records)

    def patch_hu(self, index: int) -> np.ndarray:
        """The (D, H, W) patch of sample `index` in HU (int16, or float32 when resampled to mm)."""
        scan = self.scans(self.records[index].series_uid)
        if self.size_mm is None:
            return crop_box(scan.hu, self._corners[index], self.size)
        return self._cut_mm(np.array([index]))[0].numpy()

    def _cut_mm(self, index: np.ndarray) -> torch.Tensor:
        """(B,) sample indices -> (B, D, H, W) float32 HU patches spanning `size_mm`, trilinear, air past the edges.

        Each patch's source block (the voxels its grid touches, as `crop_mm` cuts them) is copied into one
        int16 buffer padded to the dataset's largest block, then interpolated along I, R and C as batched
        matrix products with two non-zero weights a row: the buffer's shape does not depend on which samples
        share a batch, so a sample comes out the same in any batch.
        """
        lo, _ = _source_box(self.centers_irc[index], self._step[index], self.size)  # (B, 3)
        buf = np.empty((len(index), *self._block), dtype=np.int16)  # padding rows get zero weight
        for row, (i, corner) in enumerate(zip(index.tolist(), lo.tolist())):
            crop_box(self.scans(self.records[i].series_uid).hu, corner, self._block, out=buf[row])
        b, d, (md, mh, mw) = len(index), self.size[0], self._block
        wi, wr, wc = (
            _weights(self.centers_irc[index, k, None] + _offsets(n) * self._step[index, k, None] - lo[:, k, None], m)
            for k, (n, m) in enumerate(zip(self.size, self._block))
        )  # (B, n, m) each
        x = torch.bmm(wi, torch.from_numpy(buf).view(b, md, mh * mw).float())  # (B, D, MH * MW)
        x = torch.matmul(wr[:, None], x.view(b, d, mh, mw))  # (B, D, H, MW)
        return torch.matmul(x, wc.transpose(1, 2)[:, None])  # (B, D, H, W)

    def mm_blocks(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,) sample indices -> their source voxels for `Augment.batch_from_blocks`, which cuts and augments
        the mm patches in one resample: (blocks (B, MD, MH, MW) int16 HU, air past the scan; first (B, 3)
        float64 position of each patch's first voxel centre in its block; step (B, 3) block voxels per patch voxel).

        Each block is `_cut_mm`'s with a margin of ceil(step) voxels a side, so that a transform reaching up to
        one patch voxel past the patch still reads the scan (it fades to air there).
        """
        margin = np.ceil(self._step.max(0)).astype(np.int64) if len(self._step) else np.ones(3, np.int64)  # (3,)
        lo, _ = _source_box(self.centers_irc[index], self._step[index], self.size)
        lo = lo - margin  # (B, 3)
        shape = tuple(int(m) for m in np.asarray(self._block) + 2 * margin)
        buf = np.empty((len(index), *shape), dtype=np.int16)
        for row, (i, corner) in enumerate(zip(index.tolist(), lo.tolist())):
            crop_box(self.scans(self.records[i].series_uid).hu, corner, shape, out=buf[row])
        first = self.centers_irc[index] - (np.asarray(self.size) - 1) / 2 * self._step[index] - lo
        return torch.from_numpy(buf), torch.from_numpy(first), torch.from_numpy(self._step[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        patch = torch.from_numpy(hu_to_unit(self.patch_hu(index)))[None]  # (1, D, H, W)
        if self.transform is not None:
            patch = self.transform(patch)
        return patch, torch.tensor(self.labels[index]), torch.tensor(index)

    def __getitems__(self, indices: Sequence[int]) -> PatchBatch | MmBlocks:
        """The samples of `indices` as one batch: each patch cut into a row of one buffer, the transform run once.

        With `defer_mm_cut` set (by `PatchLoader`, on its own copy of an mm dataset whose augmentation can
        take blocks), the batch's source blocks instead (`MmBlocks`), for the collate to cut and augment at once.
        """
        index = np.asarray(indices, dtype=np.int64)
        if self.defer_mm_cut and self.size_mm is not None:
            return MmBlocks(self, index)
        return self._batch(index)

    def _batch(self, index: np.ndarray) -> PatchBatch:
        if self.size_mm is not None:
            patches = self._cut_mm(index)  # (B, D, H, W) HU, then clipped and scaled in place
            hu_to_unit(patches.numpy(), out=patches.numpy())
            patches = patches[:, None]
        else:
            out = np.empty((len(index), 1, *self.size), dtype=np.float32)  # (B, 1, D, H, W)
            scratch = np.empty(self.size, dtype=np.int16)
            for row, i in enumerate(index.tolist()):  # the int16 crop, clipped and scaled while converting
                crop_box(self.scans(self.records[i].series_uid).hu, self._corners[i], self.size, scratch)
                hu_to_unit(scratch, out=out[row, 0])
            patches = torch.from_numpy(out)
        if self.transform is not None:
            patches = self.transform(patches)
        return PatchBatch((patches, torch.from_numpy(self.labels[index]), torch.from_numpy(index)))

    def without_transform(self) -> PatchDataset:
        """A shallow copy that yields the patches as cut (same records, labels and open scans)."""
        plain = copy.copy(self)
        plain.transform = None
        return plain

    def balanced_sampler(self, balance: int = 1, *, num_samples: int | None = None, seed: int = 0):
        """A `BalancedSampler` over this dataset's labels: one positive, then `balance` negatives."""
        from noduleflow.data.loaders import BalancedSampler

        return BalancedSampler(self.labels, balance, num_samples=num_samples, seed=seed)


class CandidatePatches(PatchDataset):
    """LUNA16 candidates: label 1 for a nodule (class 1), 0 for everything else.

    Build one per split: `CandidatePatches(cache, index.candidates_of(split.train))`. Balance
    positives against negatives with `balanced_sampler(balance)` (or pass augmentation as
    `transform`); see `PatchDataset` for size, size_mm and transform.
    """

    def __init__(self, cache: ScanCache, candidates: Sequence[Candidate], **kwargs):
        super().__init__(cache, candidates, [int(c.is_nodule) for c in candidates], what="candidates", **kwargs)

    def balanced_sampler(self, balance: int = 1, *, num_samples: int | None = None, seed: int = 0):
        """A `BalancedSampler` as `PatchDataset`'s, drawing each candidate `Candidate.weight` times as often."""
        from noduleflow.data.loaders import BalancedSampler

        return BalancedSampler(
            self.labels, balance, num_samples=num_samples, seed=seed, weights=[c.weight for c in self.records]
        )


class MalignancySamples(PatchDataset):
    """Patches centred on annotated nodules, label 1 for malignant (`mal_bool`), 0 for benign.

    Nodules without malignancy information are left out (LUNA16 has it only in
    annotations_with_malignancy.csv).
    """

    def __init__(self, cache: ScanCache, nodules: Sequence[Nodule], **kwargs):
        known = [n for n in nodules if n.malignant is not None]
        super().__init__(cache, known, [int(n.malignant) for n in known], what="nodules", **kwargs)
