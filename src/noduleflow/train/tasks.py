"""What each task trains on: `build_task(cfg, dist)` returns the model, loss, loaders and metrics.

Every task is classification with cross-entropy on (B, C) logits, so the same `Trainer` and
`classification_metrics` serve all of them; only data and model differ.
    digits      scikit-learn's 8x8 handwritten digits, stratified train/val/test by seed
    classify    LUNA16 candidates (nodule vs. not), split by series, balanced 1:`classify.balance`
    malignancy  annotated nodules (malignant vs. benign), fine-tuned from a classify run (`model.init`)
    segment     nodule voxels with a 2D U-Net and a Dice loss: see train/segment_task.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noduleflow.config import TASKS, TrainConfig
from noduleflow.data.loaders import make_loader
from noduleflow.errors import ConfigError
from noduleflow.metrics.classification import classification_metrics
from noduleflow.models import build_model, input_size_of
from noduleflow.train.distributed import DistInfo, ShardSampler

# Book ch. 12-14 style augmentation of (1, 32, 48, 48) patches: flips, small rotation/zoom/shift, noise.
_CT_AUGMENT = {"rotate_deg": 15.0, "scale": 0.1, "offset_vox": 2.0, "noise_hu": 25.0}
# The nodule classifier sees its patches turned by any angle and zoomed by up to 20%: a nodule has no in-plane
# orientation, and with +-15 degrees and 10% it learned its ~130 training nodules (P about 1 on nearly all of them)
# while giving P < 0.1 to a tenth of another seed's nodules at their own centres (docs/decisions.md, 2026-12-07)
_CLASSIFY_AUGMENT = {**_CT_AUGMENT, "rotate_deg": 180.0, "scale": 0.2}


@dataclass
class TaskParts:
    """A task's collaborators for the `Trainer` (test_loader None when nothing is held out); trained_on: what the
    checkpoints should record about the training data for inference (the segment task: its scans' spacing)."""

    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader | None
    metrics_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] = classification_metrics
    trained_on: dict = field(default_factory=dict)


def build_task(cfg: TrainConfig, dist: DistInfo = DistInfo()) -> TaskParts:
    """Model (randomly initialised from the current torch seed), datasets and loaders of `cfg.task`."""
    if cfg.task not in _BUILDERS:
        raise ConfigError(f"unknown task '{cfg.task}'", fix=f"Choose one of: {', '.join(TASKS)}.")
    return _BUILDERS[cfg.task](cfg, dist)


def _digits(cfg: TrainConfig, dist: DistInfo) -> TaskParts:
    from noduleflow.data.digits import load_digit_splits

    splits = load_digit_splits(
        cfg.digits.classes,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.run.seed,
        augment=cfg.data.augment,
    )
    model = build_model(cfg.model, in_channels=1, num_classes=len(splits.classes))
    return _parts(cfg, dist, model, splits.train, splits.val, splits.test, sampler=None)


def _ct(cfg: TrainConfig, dist: DistInfo) -> TaskParts:
    from noduleflow.data import Augment, CandidatePatches, MalignancySamples, ScanCache, load_index
    from noduleflow.data.cache import DEFAULT_CACHE_NAME

    own = (
        cfg.classify or cfg.malignancy
    )  # the task's own section: patches, balance, epoch length (and extra candidates)
    root = Path(cfg.data.root)
    extra = {"extra_candidates": own.extra_candidates, "extra_weight": own.extra_weight} if cfg.classify else {}
    index = load_index(root, **extra)
    split = index.split(val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed)
    cache = ScanCache(cfg.data.cache or root / DEFAULT_CACHE_NAME, spacing_xyz=cfg.data.spacing or None)
    augment = (
        Augment(spatial_dims=3, **(_CLASSIFY_AUGMENT if cfg.classify else _CT_AUGMENT)) if cfg.data.augment else None
    )
    model = build_model(cfg.model, in_channels=1, num_classes=2)
    size, size_mm = input_size_of(model), own.patch_mm or None
    if cfg.task == "classify":
        # candidates on annotations_excluded.csv findings (nodules < 3 mm, non-nodules) are left out of
        # training and validation, as the LUNA16 evaluation ignores marks on them: their label is not a fact
        sets = [
            CandidatePatches(
                cache, index.candidates_of(uids, keep_excluded=False), size=size, size_mm=size_mm, transform=t
            )
            for uids, t in [(split.train, augment), (split.val, None), (split.test, None)]
        ]
    else:
        sets = [
            MalignancySamples(cache, index.nodules_of(uids), size=size, size_mm=size_mm, transform=t)
            for uids, t in [(split.train, augment), (split.val, None), (split.test, None)]
        ]
    train, val, test = sets
    for name, dataset in (("training", train), ("validation", val)):
        if len(dataset) == 0:
            raise ConfigError(
                f"the {name} split of {root} holds no {cfg.task} samples",
                fix="Use more scans (e.g. `noduleflow synth --scans 10`) or change data.val_fraction.",
            )
    sampler = train.balanced_sampler(own.balance, num_samples=own.epoch_samples or None, seed=cfg.run.seed)
    return _parts(cfg, dist, model, train, val, test if len(test) else None, sampler=sampler)


def _parts(
    cfg: TrainConfig, dist: DistInfo, model: nn.Module, train: Dataset, val: Dataset, test: Dataset | None, *, sampler
) -> TaskParts:
    """Loaders: the train loader shuffles (or follows `sampler`) and shards under DDP; val/test shard without padding.

    persistent_workers stays off: fresh workers each epoch take their seeds from the loader's
    generator, whose state the checkpoint stores, so a resumed run replays the same augmentation.
    """
    batch, workers, seed = cfg.data.batch_size, cfg.data.num_workers, cfg.run.seed
    train_loader = make_loader(
        train,
        batch,
        workers=workers,
        shuffle=sampler is None,
        seed=seed,
        sampler=sampler,
        distributed=dist.enabled,
        persistent_workers=False,
    )

    def evaluation(dataset: Dataset) -> DataLoader:
        shard = ShardSampler(len(dataset), dist.rank, dist.world_size) if dist.enabled else None
        return make_loader(dataset, batch, workers=workers, seed=seed, sampler=shard, persistent_workers=False)

    return TaskParts(
        model, nn.CrossEntropyLoss(), train_loader, evaluation(val), None if test is None else evaluation(test)
    )


def _segment(cfg: TrainConfig, dist: DistInfo) -> TaskParts:
    from noduleflow.train.segment_task import build_segment_task  # imports this module: load on use

    return build_segment_task(cfg, dist)


_BUILDERS = {"digits": _digits, "classify": _ct, "malignancy": _ct, "segment": _segment}
