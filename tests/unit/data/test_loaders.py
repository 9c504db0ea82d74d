"""Balanced sampling, seeded loaders with workers, and the DistributedSampler option."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
from luna_phantoms import nodule_xyz
from torch.utils.data.distributed import DistributedSampler

from noduleflow.data.augment import Augment
from noduleflow.data.datasets import CandidatePatches
from noduleflow.data.loaders import BalancedSampler, PatchLoader, make_loader
from noduleflow.data.luna16 import Candidate, Nodule
from noduleflow.data.segmentation import SegmentationCrops
from noduleflow.errors import ConfigError

LABELS = np.array([0] * 30 + [1] * 4 + [0] * 6)


@pytest.mark.parametrize("balance", [1, 2, 5])
def test_balanced_sampler_puts_a_positive_every_balance_plus_one(balance):
    order = np.array(list(BalancedSampler(LABELS, balance, num_samples=120, seed=0)))
    assert len(order) == 120
    expected = (np.arange(120) % (balance + 1) == 0).astype(int)
    np.testing.assert_array_equal(LABELS[order], expected)
    assert set(order[LABELS[order] == 0]) == set(np.flatnonzero(LABELS == 0))  # >= 60 negative slots visit all 36


def test_balanced_sampler_reshuffles_per_epoch_and_repeats_per_seed():
    sampler = BalancedSampler(LABELS, 1, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(BalancedSampler(LABELS, 0, seed=3)) != first and sorted(BalancedSampler(LABELS, 0)) == list(range(40))


def test_balanced_sampler_shards_by_rank_and_keeps_the_ratio():
    whole = list(BalancedSampler(LABELS, 1, num_samples=40, seed=1))
    ranks = [list(BalancedSampler(LABELS, 1, num_samples=40, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks[0] + ranks[1] == whole and len(ranks[0]) == 20
    assert all(LABELS[r].sum() == 10 for r in ranks)


def test_balanced_sampler_draws_each_index_as_often_as_its_weight():
    weights = np.ones(len(LABELS), np.int64)
    weights[0], weights[30] = 10, 3  # a negative standing for ten, a positive for three
    order = np.array(list(BalancedSampler(LABELS, 1, num_samples=90, seed=0, weights=weights)))
    negatives, positives = order[LABELS[order] == 0], order[LABELS[order] == 1]
    assert len(negatives) == 45 == 35 + 10  # one pass over the weighted pool of negatives
    assert np.sum(negatives == 0) == 10 and set(negatives) == set(np.flatnonzero(LABELS == 0))
    assert 3 * 7 <= np.sum(positives == 30) <= 3 * 8  # 45 positive slots cycle 7.5 times over a pool of 3 + 1 + 1 + 1
    with pytest.raises(ValueError, match="positive integers"):
        BalancedSampler(LABELS, 1, weights=np.zeros(len(LABELS)))


def test_candidate_patches_sample_by_candidate_weight(luna_prepared):
    v = luna_prepared["volumes"][0]
    rows = [Candidate(v.series_uid, nodule_xyz(v), True)] + [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, 30, 30])), False, weight=1 + 3 * (i == 5))
        for i in range(5, 30, 5)
    ]
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(8, 16, 16))
    order = np.array(list(ds.balanced_sampler(1, num_samples=16)))
    assert np.sum(order == 1) == 4 and all(
        np.sum(order == k) == 1 for k in range(2, 6)
    )  # 8 negative slots, pool 4 + 1 + 1 + 1 + 1


def test_balancing_needs_both_labels():
    with pytest.raises(ConfigError, match="0 positives"):
        BalancedSampler(np.zeros(5), 1)


def test_loader_with_balanced_sampler_alternates_labels(luna_prepared):
    v = luna_prepared["volumes"][0]
    rows = [Candidate(v.series_uid, nodule_xyz(v), True)] + [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, 30, 30])), False) for i in range(5, 30, 5)
    ]
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(8, 16, 16))
    loader = make_loader(ds, 8, sampler=ds.balanced_sampler(1, num_samples=16))
    patches, labels, index = next(iter(loader))
    assert patches.shape == (8, 1, 8, 16, 16) and labels.tolist() == [1, 0] * 4
    assert (index[labels == 1] == 0).all()


def test_seeded_workers_give_the_same_first_batch_twice(luna_prepared):
    nodules = [Nodule(v.series_uid, nodule_xyz(v), 6.0) for v in luna_prepared["volumes"]]
    ds = SegmentationCrops(
        luna_prepared["cache"],
        nodules,
        spatial_dims=2,
        crop=(32, 32),
        context=1,
        samples_per_epoch=12,
        transform=Augment(2, rotate_deg=15, noise_hu=10),
    )

    def first(seed):
        loader = make_loader(ds, 4, workers=2, shuffle=True, seed=seed)
        image, mask, index = next(iter(loader))
        return image, mask, index

    a, b, c = first(5), first(5), first(6)
    assert a[0].shape == (4, 3, 32, 32) and a[1].shape == (4, 1, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_make_loader_options(luna_prepared, tmp_path):
    v = luna_prepared["volumes"][0]
    ds = CandidatePatches(luna_prepared["cache"], [Candidate(v.series_uid, nodule_xyz(v), True)] * 6, size=(4, 4, 4))
    loader = make_loader(ds, 2, workers=1, shuffle=True)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert loader.worker_init_fn is not None and loader.generator is not None
    with pytest.raises(ConfigError, match="batch_size=0"):
        make_loader(ds, 0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_loader(ds, 2, distributed=True, shuffle=True, seed=1)
        assert isinstance(loader.sampler, DistributedSampler) and sorted(
            i for b in loader for i in b[2].tolist()
        ) == list(range(6))
    finally:
        dist.destroy_process_group()


def _column_rows(v) -> list[Candidate]:
    return [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, r, 30])), i % 7 == 0) for i in range(2, 38, 3) for r in (20, 40)
    ]


@pytest.mark.parametrize("workers, size_mm", [(0, None), (2, None), (0, (9.0, 8.0, 8.0))])
def test_patch_loader_batches_equal_the_dataset_samples(luna_prepared, workers, size_mm):
    ds = CandidatePatches(
        luna_prepared["cache"], _column_rows(luna_prepared["volumes"][0]), size=(6, 10, 10), size_mm=size_mm
    )
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, 1, 6, 10, 10) via __getitem__
    loader = make_loader(ds, 4, workers=workers, shuffle=True, seed=0, persistent_workers=workers > 0)
    assert isinstance(loader, PatchLoader) and loader.augment is None and len(loader) == 6
    seen = []
    for patches, labels, index in loader:
        assert patches.shape[1:] == (1, 6, 10, 10) and torch.equal(patches, expected[index])
        assert torch.equal(labels, torch.from_numpy(ds.labels)[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(len(ds))) and loader.dataset.records is ds.records


def test_the_data_loader_calls_getitems_once_per_batch(luna_prepared, monkeypatch):
    calls = []
    original = CandidatePatches.__getitems__

    def counted(self, indices):
        calls.append(list(indices))
        return original(self, indices)

    monkeypatch.setattr(CandidatePatches, "__getitems__", counted)
    monkeypatch.setattr(CandidatePatches, "__getitem__", lambda self, i: pytest.fail("per-sample path taken"))
    ds = CandidatePatches(luna_prepared["cache"], _column_rows(luna_prepared["volumes"][0]), size=(6, 10, 10))
    batches = [index.tolist() for _, _, index in make_loader(ds, 5, shuffle=True, seed=1)]
    assert calls == batches and [len(b) for b in batches] == [5, 5, 5, 5, 4]


def test_patch_loader_augments_whole_batches_after_collation(luna_prepared):
    rows = _column_rows(luna_prepared["volumes"][0])
    plain = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10))
    flips = Augment(flip_axes=(2,))
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), transform=flips)
    loader = make_loader(ds, 8, shuffle=True, seed=0)
    assert loader.augment is flips and loader.dataset.transform is None and ds.transform is flips

    def one_pass(seed: int) -> list:
        torch.manual_seed(seed)  # workers=0: the batch is augmented in this process, from torch's RNG
        return list(make_loader(ds, 8, shuffle=True, seed=0))

    first, again = one_pass(3), one_pass(3)
    flipped = 0
    for (patches, labels, index), (patches2, _, _) in zip(first, again):
        assert torch.equal(patches, patches2) and torch.equal(labels, torch.from_numpy(ds.labels)[index])
        for patch, i in zip(patches, index):
            cut = plain[int(i)][0]
            assert torch.equal(patch, cut) or torch.equal(patch, cut.flip(-1))
            flipped += not torch.equal(patch, cut)
    assert 0 < flipped < len(ds)
    loader.augment_on("cpu")  # the trainer's call on a CPU-only run: still augmented in the collate
    assert loader.augment_device is None and loader.collate_fn.augment is flips


def test_augment_on_a_device_moves_the_batch_there_before_augmenting(luna_prepared):
    seen = []

    def record(patches: torch.Tensor) -> torch.Tensor:
        seen.append((patches.device.type, tuple(patches.shape)))
        return patches

    rows = _column_rows(luna_prepared["volumes"][0])
    loader = make_loader(CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), transform=record), 8)
    list(loader)
    assert seen == [("cpu", (8, 1, 6, 10, 10))] * 3  # in the collate, on the CPU
    seen.clear()
    loader.augment_on("meta")  # a stand-in for a GPU: any device but the CPU
    assert loader.collate_fn.augment is None
    batches = list(loader)
    assert seen == [("meta", (8, 1, 6, 10, 10))] * 3 and all(b[0].device.type == "meta" for b in batches)
    assert all(b[1].device.type == "cpu" for b in batches)  # labels stay for the trainer to move


def test_a_worker_augments_straight_into_shared_memory_with_the_same_result(luna_prepared):
    rows = _column_rows(luna_prepared["volumes"][0])
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), transform=aug)
    loader = make_loader(ds, 8)
    batch = loader.dataset.__getitems__(list(range(8)))
    torch.manual_seed(4)
    here = loader.collate_fn(batch)[0]
    torch.manual_seed(4)
    with mock.patch("noduleflow.data.loaders.get_worker_info", return_value=object()):  # as in a worker
        shared = loader.collate_fn(batch)[0]
    assert shared.is_shared() and not here.is_shared() and torch.equal(here, shared)
    assert torch.equal(batch.collated[0], torch.stack([ds.without_transform()[i][0] for i in range(8)]))  # not written


def test_seeded_workers_augment_patch_batches_the_same_way_twice(luna_prepared):
    rows = _column_rows(luna_prepared["volumes"][0])
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), transform=aug)

    def one_pass(seed: int) -> torch.Tensor:
        loader = make_loader(ds, 4, workers=2, shuffle=True, seed=seed, persistent_workers=False)
        return torch.cat([patches for patches, _, _ in loader])

    a, b, c = one_pass(5), one_pass(5), one_pass(6)
    assert a.shape == (len(ds), 1, 6, 10, 10) and torch.equal(a, b) and not torch.equal(a, c)


def test_a_worker_batch_crosses_processes_as_one_shared_file_and_arrives_as_plain_tensors(luna_prepared):
    import multiprocessing.reduction

    import torch.multiprocessing  # noqa: F401 - registers torch's reducers with the pickler the workers use

    ForkingPickler = multiprocessing.reduction.ForkingPickler

    rows = _column_rows(luna_prepared["volumes"][0])
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    loader = make_loader(CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), transform=aug), 8)
    with mock.patch("noduleflow.data.loaders.get_worker_info", return_value=object()):  # as in a worker
        sent = loader.collate_fn(loader.dataset.__getitems__([3, 1, 4, 1, 5, 9, 2, 6]))
    patches, labels, index = sent
    with mock.patch.object(multiprocessing.reduction, "DupFd", wraps=multiprocessing.reduction.DupFd) as dup:
        data = ForkingPickler.dumps(sent)
    assert dup.call_count == 1  # the patches' shared memory; labels and indices go by value
    got = ForkingPickler.loads(data)
    assert type(got) is tuple and all(type(t) is torch.Tensor for t in got)
    assert torch.equal(got[0], patches) and got[0].is_shared()
    assert got[1].dtype == got[2].dtype == torch.int64
    assert got[1].tolist() == loader.dataset.labels[[3, 1, 4, 1, 5, 9, 2, 6]].tolist()
    assert got[2].tolist() == [3, 1, 4, 1, 5, 9, 2, 6]


def test_batches_from_workers_are_plain_tuples_equal_to_the_ones_made_here(luna_prepared):
    rows = _column_rows(luna_prepared["volumes"][0])
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10))
    here = list(make_loader(ds, 4, shuffle=True, seed=2))
    there = list(make_loader(ds, 4, workers=2, shuffle=True, seed=2, persistent_workers=False))
    assert len(here) == len(there) == 6
    for a, b in zip(here, there):
        assert type(b) is tuple and all(torch.equal(x, y) for x, y in zip(a, b))


def test_mm_patches_are_cut_and_augmented_in_one_resample_close_to_cutting_then_augmenting(luna_prepared):
    from noduleflow.data.datasets import MmBlocks

    rows = [
        Candidate(v.series_uid, tuple(v.irc_to_xyz([i, 20 + i % 30, 60 - i])), i % 5 == 0)
        for v in luna_prepared["volumes"]
        for i in range(4, 36, 2)
    ]
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(8, 16, 16), size_mm=(16.0, 16.0, 16.0), transform=aug)
    loader = make_loader(ds, 16, shuffle=True, seed=0)
    assert loader.dataset.defer_mm_cut and not ds.defer_mm_cut
    torch.manual_seed(5)
    fused = list(loader)
    torch.manual_seed(5)  # the same draws, through a cut and a second resample
    order = [index for _, _, index in fused]
    two_steps = [aug.batch(loader.dataset._batch(index.numpy()).collated[0])[0] for index in order]
    a, b = torch.cat([p for p, _, _ in fused]), torch.cat(two_steps)
    assert a.shape == b.shape == (len(ds), 1, 8, 16, 16)
    diff = (a - b).abs()  # one interpolation instead of two, the same transforms: apart only at sharp edges
    assert diff.median() < 0.003 and diff.mean() < 0.02  # 3 and 20 HU (the phantom's edges are sharp)
    assert abs(a.mean() - b.mean()) < 0.005 and abs(a.std() / b.std() - 1) < 0.03
    assert torch.equal(torch.cat([label for _, label, _ in fused]), torch.from_numpy(ds.labels)[torch.cat(order)])
    loader.augment_on("meta")  # augmented on a device: the collate passes the cut patches on
    assert not loader.dataset.defer_mm_cut
    loader.augment_on("cpu")
    assert loader.dataset.defer_mm_cut and isinstance(loader.dataset.__getitems__([0, 1]), MmBlocks)


def test_workers_cut_and_augment_mm_patches_the_same_way_twice(luna_prepared):
    rows = _column_rows(luna_prepared["volumes"][0])
    aug = Augment(rotate_deg=15, scale=0.1, offset_vox=2, noise_hu=25)
    ds = CandidatePatches(luna_prepared["cache"], rows, size=(6, 10, 10), size_mm=(9.0, 8.0, 8.0), transform=aug)

    def one_pass(seed: int) -> list:
        return list(make_loader(ds, 4, workers=2, shuffle=True, seed=seed, persistent_workers=False))

    a, b = one_pass(5), one_pass(5)
    assert len(a) == 6 and all(type(x) is tuple and x[0].is_shared() for x in a)
    assert all(torch.equal(p, q) for x, y in zip(a, b) for p, q in zip(x, y))
    assert sorted(torch.cat([i for _, _, i in a]).tolist()) == list(range(len(ds)))
