"""The `segment` task: a 2D U-Net that marks nodule voxels, trained on `SegmentationCrops`.

Why 2D with context slices (as in "Deep Learning with PyTorch" ch. 13) rather than 3D patches:
measured on this project's 2-core CPU (bench/detect.py's machine; docs/decisions.md), a whole scan
segments several times faster with the 2D U-Net than with a 3D one of the same width and depth,
and the context slices still let the net tell a round nodule (present over several slices) from a
vessel crossing the slice.

Every setting below is a field of the run's `segment:` section (config_sections.SegmentConfig),
saved with the run; the defaults are the ones this docstring explains.

Samples are (image (2 * segment.context + 1, *segment.crop) HU/1000, mask (1, *segment.crop) bool of the
centre slice, index); a `segment.lung_fraction` of them are random crops inside the lungs (mostly
vessels: the hard negatives), the others jittered crops around nodules. The loss is a Tversky loss
(a Dice weighted towards recall: a missed nodule voxel costs `tversky_beta`, a false one
`tversky_alpha`), summed over the whole batch. Why not the book's per-sample
dice(all) + 8 * dice(foreground): measured here, after a few epochs it still marked nearly
every lung voxel, because a per-sample Dice of an empty crop has
almost no gradient, so the half of the crops without a nodule barely teach precision; summed over
the batch, their false voxels count. To it `segment_loss` adds a voxel-wise cross-entropy (nodule
voxels weigh `pos_weight`), so that small nodules, a few voxels each, count as much per voxel as large
ones. The classifier downstream removes the remaining false positives. Validation uses a fixed
set of `segment.val_samples` crops drawn once with `run.seed`, so that best.pt is picked on the same
samples every epoch.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from noduleflow.config import SegmentConfig, TrainConfig
from noduleflow.data.loaders import make_loader
from noduleflow.errors import ConfigError
from noduleflow.models.unet import segmentation_unet
from noduleflow.train.distributed import DistInfo, ShardSampler
from noduleflow.train.tasks import TaskParts

if TYPE_CHECKING:
    from noduleflow.data import SegmentationCrops

SPATIAL_DIMS = 2  # the U-Net and its crops (detect runs it slice by slice); its context slices are `segment.context`
_DEFAULT = SegmentConfig()  # the loss functions' defaults: a run passes its own section's values


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = _DEFAULT.tversky_alpha,
    beta: float = _DEFAULT.tversky_beta,
    eps: float = 1.0,
) -> torch.Tensor:
    """Scalar 1 - TP / (TP + alpha FP + beta FN) of sigmoid((B, 1, *S) logits) against (B, 1, *S) masks, over the batch.

    Soft counts (probabilities); alpha = beta = 0.5 is the soft Dice. `eps` (one voxel) keeps a
    batch without nodules defined: its loss then falls as its false-positive mass falls.
    """
    probs, target = torch.sigmoid(logits.float()), target.float()
    tp = (probs * target).sum()
    fp, fn = (probs * (1 - target)).sum(), ((1 - probs) * target).sum()
    return 1 - (tp + eps) / (tp + alpha * fp + beta * fn + eps)


def segment_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = _DEFAULT.tversky_alpha,
    beta: float = _DEFAULT.tversky_beta,
    pos_weight: float = _DEFAULT.pos_weight,
) -> torch.Tensor:
    """The U-Net's training loss: `tversky_loss` plus a voxel-wise binary cross-entropy with nodule voxels weighing `pos_weight`.

    Why the cross-entropy term (as nnU-Net adds one to its Dice): the Tversky ratio is pooled over the batch,
    so a 3-4 mm nodule's few voxels barely move it next to a large nodule's hundreds, and the U-Net left
    many of its small training nodules unmarked; per voxel, the cross-entropy weighs every nodule voxel
    alike. Measured on the bench's scans, it marks more nodules (training and held-out) for a few more
    components per scan, and the whole detector's held-out CPM rose (docs/decisions.md).
    """
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), target.float(), pos_weight=torch.tensor(pos_weight, device=logits.device)
    )
    return tversky_loss(logits, target, alpha=alpha, beta=beta) + bce


def segmentation_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Voxel precision, recall and F1 (= Dice over all voxels pooled) of logits > 0 against the masks."""
    pred, truth = logits > 0, target.bool()
    tp = float((pred & truth).sum())
    fp, fn = float((pred & ~truth).sum()), float((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": precision, "recall": recall, "f1": f1}


def build_segment_task(cfg: TrainConfig, dist: DistInfo = DistInfo()) -> TaskParts:
    """U-Net, weighted Dice loss and crop loaders of the LUNA16 folder `cfg.data.root` (split by series), as `cfg.segment` says."""
    from noduleflow.data import Augment, ScanCache, SegmentationCrops, load_index
    from noduleflow.data.cache import DEFAULT_CACHE_NAME

    root = Path(cfg.data.root)
    index = load_index(root)
    split = index.split(val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed)
    cache = ScanCache(cfg.data.cache or root / DEFAULT_CACHE_NAME, spacing_xyz=cfg.data.spacing or None)
    own = cfg.segment
    augment = Augment(spatial_dims=SPATIAL_DIMS, **dataclasses.asdict(own.augment)) if cfg.data.augment else None

    def crops(uids, transform, samples):
        return SegmentationCrops(
            cache,
            index.nodules_of(uids),
            uids,
            spatial_dims=SPATIAL_DIMS,
            crop=own.crop,
            context=own.context,
            lung_fraction=own.lung_fraction,
            samples_per_epoch=samples,
            transform=transform,
        )

    train = crops(split.train, augment, own.epoch_samples or None)
    held_out = min(own.val_samples, len(train))  # a short (test) run gets a short validation too
    val = crops(split.val, None, held_out)
    test = crops(split.test, None, held_out) if split.test else None
    for name, dataset in (("training", train), ("validation", val)):
        if dataset.n_nodule_samples == 0:
            raise ConfigError(
                f"the {name} split of {root} holds no annotated nodules to segment",
                fix="Use more scans (e.g. `noduleflow synth --scans 10`) or change data.val_fraction.",
            )
    model = segmentation_unet(cfg.model.width, cfg.model.depth, own.context, head_bias=own.head_bias)
    batch, workers, seed = cfg.data.batch_size, cfg.data.num_workers, cfg.run.seed
    train_loader = make_loader(
        train, batch, workers=workers, shuffle=True, seed=seed, distributed=dist.enabled, persistent_workers=False
    )

    def evaluation(dataset: Dataset):
        frozen = _frozen(dataset, seed)
        shard = ShardSampler(len(frozen), dist.rank, dist.world_size) if dist.enabled else None
        return make_loader(frozen, batch, seed=seed, sampler=shard, persistent_workers=False)

    return TaskParts(
        model,
        partial(segment_loss, alpha=own.tversky_alpha, beta=own.tversky_beta, pos_weight=own.pos_weight),
        train_loader,
        evaluation(val),
        None if test is None else evaluation(test),
        metrics_fn=segmentation_metrics,
        trained_on={"spacing_irc_mm": _spacing_record(train, own.augment.scale if cfg.data.augment else 0.0)},
    )


def _spacing_record(train: SegmentationCrops, scale: float) -> list[list[float]]:
    """Per axis I, R, C, the [low, median, high] voxel spacing (mm) of the training scans as the U-Net sees them
    (the ends widened by the scale augmentation): the Predictor segments a scan outside it resampled to the
    median (`detect.grid`)."""
    from noduleflow.detect.grid import spacing_ranges

    spacings = [train.scans(uid).spacing_xyz[::-1] for uid in train.series_uids]
    return [[r.low, r.median, r.high] for r in spacing_ranges(np.array(spacings), scale)]


def _frozen(dataset: Dataset, seed: int) -> TensorDataset:
    """Every sample of `dataset` drawn once under `seed` (random crops fixed), without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        items = [dataset[i] for i in range(len(dataset))]
    return TensorDataset(*(torch.stack(column) for column in zip(*items)))
