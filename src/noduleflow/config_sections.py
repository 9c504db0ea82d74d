"""The sections of the training config (`noduleflow.config.TrainConfig`): frozen dataclasses, one per concern.

`model`, `optim`, `data` and `run` are read by every task; `DigitsConfig`, `ClassifyConfig`,
`MalignancyConfig` and `SegmentConfig` each by one task only (`SECTIONS`). Every field carries its
help text in `metadata["help"]` (the CLI's flag help); each section checks its ranges in
`__post_init__` and raises `ConfigError` (a `ValueError`) naming the key and the fix. Types are
checked by pydantic when a config is loaded (`noduleflow.config`), which reads `__pydantic_config__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from noduleflow.errors import ConfigError

METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auc", "ap", "f1_best")
"""Per-epoch validation metrics; `run.monitor` names one of them as `val_<metric>` (ap and f1_best: two classes only)."""

STRICT = {"extra": "forbid"}  # pydantic's config of each section (a ConfigDict is a plain dict): unknown keys fail


def _f(default: Any, help: str) -> Any:  # noqa: A002 - `help` reads best at the call sites
    """A dataclass field with its help text; mutable defaults (tuples only here) are fine frozen."""
    return field(default=default, metadata={"help": help})


def require(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise the ConfigError of `key` = `value` unless `ok`, with the `fix` a user reads."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed", fix=fix)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build and how to initialise it."""

    __pydantic_config__ = STRICT

    name: str = _f("digits_cnn", "Registered architecture; `noduleflow.models.list_models()` lists them.")
    width: int = _f(32, "Channels of the first conv block; each further block doubles them.")
    depth: int = _f(2, "Number of conv blocks (each halves the spatial size).")
    init: str = _f(
        "", "Run folder or .pt file whose best weights initialise the model (fine-tuning); empty: random init."
    )
    finetune_depth: int = _f(
        1, "With `init`: how many top-level blocks, counted back from the head, keep training (0: all)."
    )
    input_size: tuple[int, ...] = _f(
        (),
        "Patch classifiers: the patch's size in voxels, (D, H, W), each divisible by 2**depth; empty: the architecture's own (nodule_net 16 x 32 x 32).",
    )

    def __post_init__(self) -> None:
        from noduleflow.models import list_models

        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))

        require(self.name in list_models(), "model.name", self.name, f"Choose one of: {', '.join(list_models())}.")
        require(self.width >= 1, "model.width", self.width, "Set model.width to a positive channel count such as 8.")
        require(self.depth >= 1, "model.depth", self.depth, "Set model.depth to a positive number of blocks such as 4.")
        require(
            self.finetune_depth >= 0,
            "model.finetune_depth",
            self.finetune_depth,
            "Use 0 (train all) or a positive block count.",
        )
        require(
            all(s > 0 for s in self.input_size),
            "model.input_size",
            list(self.input_size),
            "Use positive sizes, e.g. [16, 24, 24].",
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient handling."""

    __pydantic_config__ = STRICT

    name: str = _f("adamw", "Optimizer: 'adamw' or 'sgd' (with momentum).")
    lr: float = _f(3e-3, "Peak learning rate.")
    momentum: float = _f(0.9, "SGD momentum (ignored by AdamW).")
    weight_decay: float = _f(0.0, "Decoupled weight decay (AdamW) or L2 penalty (SGD).")
    scheduler: str = _f("cosine", "Learning-rate schedule over all optimizer steps: 'none' or 'cosine'.")
    grad_clip: float = _f(0.0, "Clip the global gradient L2 norm to this value before each step; 0 turns clipping off.")
    accumulate: int = _f(
        1,
        "Micro-batches whose gradients add up before one optimizer step (effective batch = batch_size x accumulate x processes).",
    )

    def __post_init__(self) -> None:
        require(self.name in ("adamw", "sgd"), "optim.name", self.name, "Use 'adamw' or 'sgd'.")
        require(self.lr > 0, "optim.lr", self.lr, "Set optim.lr to a positive learning rate such as 1e-3.")
        require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "Use a momentum in [0, 1), e.g. 0.9.")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "Use 0 or a positive weight decay.")
        require(self.scheduler in ("none", "cosine"), "optim.scheduler", self.scheduler, "Use 'none' or 'cosine'.")
        require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "Use 0 (off) or a positive norm such as 1.0.")
        require(
            self.accumulate >= 1, "optim.accumulate", self.accumulate, "Use 1 (no accumulation) or more micro-batches."
        )


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how they are batched: what every task reads."""

    __pydantic_config__ = STRICT

    root: str = _f("", "Dataset folder (LUNA16 layout) of the CT tasks; not read by 'digits'.")
    cache: str = _f("", "Scan cache folder written by `noduleflow prepare`; empty: <root>/.noduleflow-cache.")
    spacing: tuple[float, ...] = _f(
        (),
        "Voxel spacing X, Y, Z in mm of the cache entries to read (as passed to `prepare --spacing`); empty: native.",
    )
    batch_size: int = _f(64, "Samples per micro-batch in each process.")
    num_workers: int = _f(0, "DataLoader worker processes (0 loads in the training process).")
    val_fraction: float = _f(
        0.15, "Fraction held out for validation (digits: of images, stratified by class; CT: of series)."
    )
    test_fraction: float = _f(0.15, "Fraction held out for the final test of best.pt (as val_fraction); 0: no test.")
    augment: bool = _f(True, "Random augmentation of training samples (after any cache).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "Use a positive batch size such as 32.")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "Use 0 or a positive worker count.")
        require(
            0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "Use a fraction in (0, 1) such as 0.15."
        )
        require(
            0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
            "data.test_fraction",
            self.test_fraction,
            "Use a fraction in [0, 1) whose sum with data.val_fraction stays below 1.",
        )
        require(
            self.spacing == () or (len(self.spacing) == 3 and min(self.spacing) > 0),
            "data.spacing",
            list(self.spacing),
            "Give three positive millimetre values X, Y, Z, or leave it empty.",
        )


@dataclass(frozen=True)
class DigitsConfig:
    """What only `train digits` reads."""

    __pydantic_config__ = STRICT

    classes: tuple[int, ...] = _f((), "Which digits to keep, e.g. [0, 1]; empty keeps all ten.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        require(
            all(0 <= c <= 9 for c in self.classes) and len(set(self.classes)) == len(self.classes),
            "digits.classes",
            list(self.classes),
            "List distinct digits 0-9, e.g. [0, 1], or leave it empty for all ten.",
        )
        require(len(self.classes) != 1, "digits.classes", list(self.classes), "Keep at least two digits, e.g. [0, 1].")


@dataclass(frozen=True)
class MalignancyConfig:
    """What the patch classifiers read (`train malignancy`; `train classify` reads these and ClassifyConfig's)."""

    __pydantic_config__ = STRICT

    epoch_samples: int = _f(0, "Training samples per epoch; 0: the training set's size.")
    balance: int = _f(1, "Negatives per positive in each epoch's sample order (book ch. 12); 0: plain shuffle.")
    patch_mm: tuple[float, ...] = _f(
        (),
        "Millimetres each patch spans, (D, H, W) = (Z, Y, X), resampled to the model's input size, so that scans of any spacing show the same anatomy; empty: the scan's own voxels.",
    )

    def __post_init__(self) -> None:
        key = _section_of(self)
        object.__setattr__(self, "patch_mm", tuple(float(s) for s in self.patch_mm))
        require(
            self.patch_mm == () or (len(self.patch_mm) == 3 and min(self.patch_mm) > 0),
            f"{key}.patch_mm",
            list(self.patch_mm),
            "Give three positive millimetre values D, H, W (Z, Y, X), e.g. [32, 40, 40], or leave it empty.",
        )
        require(
            self.balance >= 0, f"{key}.balance", self.balance, "Use 0 (plain shuffle) or a positive ratio such as 1."
        )
        require(
            self.epoch_samples >= 0,
            f"{key}.epoch_samples",
            self.epoch_samples,
            "Use 0 (whole set) or a positive count.",
        )


@dataclass(frozen=True)
class ClassifyConfig(MalignancyConfig):
    """What only `train classify` reads: MalignancyConfig's fields plus the extra candidates."""

    extra_candidates: tuple[str, ...] = _f(
        (),
        "More CSVs in candidates.csv's format to add to it (`train detector` adds the segmentation's own candidates).",
    )
    extra_weight: int = _f(
        1, "How many times as often a balanced epoch draws an extra_candidates row as a candidates.csv row."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "extra_candidates", tuple(str(c) for c in self.extra_candidates))
        require(self.extra_weight >= 1, "classify.extra_weight", self.extra_weight, "Use 1 (no extra weight) or more.")


@dataclass(frozen=True)
class AugmentConfig:
    """Random 2D augmentation of the U-Net's training crops (`data.Augment`): flips plus these ranges."""

    __pydantic_config__ = STRICT

    rotate_deg: float = _f(15.0, "Largest in-plane rotation, degrees either way.")
    scale: float = _f(0.1, "Largest zoom in or out, as a fraction.")
    offset_vox: float = _f(2.0, "Largest shift, voxels either way.")
    noise_hu: float = _f(25.0, "Standard deviation of the added Gaussian noise, HU.")
    low_res: float = _f(
        0.0,
        "Share of crops shown as if scanned with coarser voxels (averaged down, interpolated back), after the noise.",
    )
    low_res_factor: tuple[float, ...] = _f(
        (3.0, 2.5), "Largest coarsening of low_res: in-plane, and along the slices (the context slices)."
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "low_res_factor", tuple(float(f) for f in self.low_res_factor))
        for name in ("rotate_deg", "scale", "offset_vox", "noise_hu"):
            value = getattr(self, name)
            require(value >= 0, f"segment.augment.{name}", value, "Use 0 (off) or a positive range.")
        require(self.scale < 1, "segment.augment.scale", self.scale, "Use a zoom fraction below 1, e.g. 0.1.")
        require(0 <= self.low_res <= 1, "segment.augment.low_res", self.low_res, "Use a share in [0, 1], e.g. 0.25.")
        require(
            len(self.low_res_factor) == 2 and min(self.low_res_factor) >= 1,
            "segment.augment.low_res_factor",
            list(self.low_res_factor),
            "Give two factors >= 1 (in-plane, along the slices), e.g. [3.0, 2.5].",
        )


@dataclass(frozen=True)
class SegmentConfig:
    """What only `train segment` reads (train/segment_task.py says why each default is what it is)."""

    __pydantic_config__ = STRICT

    context: int = _f(
        3,
        "Slices on each side of the segmented one that the 2D U-Net sees as channels (2 * context + 1 inputs); saved with the run, read back by `detect` and `export`.",
    )
    epoch_samples: int = _f(2048, "Training crops per epoch; 0: as many as the training nodules / (1 - lung_fraction).")
    crop: tuple[int, ...] = _f((64, 64), "Training crop (H, W) in voxels.")
    lung_fraction: float = _f(0.5, "Fraction of the crops drawn at random inside the lungs; the rest around nodules.")
    val_samples: int = _f(256, "Fixed validation crops, drawn once with run.seed (fewer when an epoch has fewer).")
    tversky_alpha: float = _f(0.3, "Tversky loss weight of a false-positive voxel.")
    tversky_beta: float = _f(0.7, "Tversky loss weight of a missed nodule voxel.")
    pos_weight: float = _f(10.0, "Weight of a nodule voxel in the loss's voxel-wise cross-entropy term.")
    head_bias: float = _f(-4.0, "Initial bias of the U-Net's output logit: a prior for how rare nodule voxels are.")
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "Ranges of the augmentation."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", tuple(int(s) for s in self.crop))
        require(
            self.context >= 0, "segment.context", self.context, "Use 0 (the slice alone) or a positive count such as 3."
        )
        require(
            self.epoch_samples >= 0,
            "segment.epoch_samples",
            self.epoch_samples,
            "Use 0 (twice the training nodules) or a positive count.",
        )
        require(
            len(self.crop) == 2 and min(self.crop) > 0,
            "segment.crop",
            list(self.crop),
            "Give two positive sizes, e.g. [64, 64].",
        )
        require(0 <= self.lung_fraction < 1, "segment.lung_fraction", self.lung_fraction, "Use a fraction in [0, 1).")
        require(self.val_samples >= 1, "segment.val_samples", self.val_samples, "Use a positive count such as 256.")
        for name in ("tversky_alpha", "tversky_beta", "pos_weight"):
            value = getattr(self, name)
            require(value >= 0, f"segment.{name}", value, "Use 0 or a positive weight.")


SECTIONS: dict[str, type] = {
    "digits": DigitsConfig,
    "classify": ClassifyConfig,
    "malignancy": MalignancyConfig,
    "segment": SegmentConfig,
}
"""Each task's own section type; `TrainConfig` holds the one of its task, the others are None."""


def _section_of(section: Any) -> str:
    return next(name for name, cls in SECTIONS.items() if type(section) is cls)


@dataclass(frozen=True)
class RunConfig:
    """Run folder, length, devices and the speed policy applied by `train.wrap`."""

    __pydantic_config__ = STRICT

    name: str = _f("", "Run folder name under `runs_dir`; empty: the task name.")
    runs_dir: str = _f("runs", "Folder that holds one sub-folder per run.")
    epochs: int = _f(20, "Epochs to train in total (a resumed run continues up to this number).")
    seed: int = _f(0, "Seed of weights, shuffling and augmentation: the same seed gives the same run.")
    device: str = _f("auto", "'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    amp: str = _f(
        "auto",
        "Mixed precision: 'auto' (bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else off), 'off', 'bf16', 'fp16' (CUDA only).",
    )
    compile: bool = _f(False, "Compile the model with torch.compile (slow first epoch, faster steps after).")
    channels_last: str = _f(
        "auto", "Channels-last memory format for conv nets: 'auto' (3D nets on CPU), 'on' or 'off'."
    )
    monitor: str = _f(
        "val_loss",
        "Metric that picks best.pt and drives early stopping: val_loss, val_accuracy, val_precision, val_recall, val_f1, val_auc, val_ap or val_f1_best.",
    )
    patience: int = _f(0, "Stop after this many validated epochs without a better `monitor`; 0 never stops early.")
    val_every: int = _f(
        1,
        "Validate after every N-th epoch and after the last (0: only after the last); best.pt is the best validated epoch.",
    )
    progress: bool = _f(True, "Show a progress bar with samples/s while training.")
    threads: int = _f(
        0,
        "CPU threads per process for torch ops; 0 keeps PyTorch's choice (one per core). 1 is faster for small models on a busy machine.",
    )

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "run.epochs", self.epochs, "Train for at least 1 epoch.")
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "run.device",
            self.device,
            "Use 'auto', 'cpu', 'cuda' or 'cuda:N'.",
        )
        require(
            self.amp in ("auto", "off", "bf16", "fp16"), "run.amp", self.amp, "Use 'auto', 'off', 'bf16' or 'fp16'."
        )
        require(
            self.channels_last in ("auto", "on", "off"),
            "run.channels_last",
            self.channels_last,
            "Use 'auto', 'on' or 'off'.",
        )
        require(
            self.monitor in {f"val_{m}" for m in METRICS},
            "run.monitor",
            self.monitor,
            f"Use one of: {', '.join(f'val_{m}' for m in METRICS)}.",
        )
        require(self.threads >= 0, "run.threads", self.threads, "Use 0 (PyTorch's default) or a positive thread count.")
        require(
            self.patience >= 0, "run.patience", self.patience, "Use 0 (no early stopping) or a positive epoch count."
        )
        require(
            self.val_every >= 0, "run.val_every", self.val_every, "Use 1 (every epoch), more, or 0 (only the last)."
        )
        require(
            "/" not in self.name and self.name not in (".", ".."),
            "run.name",
            self.name,
            "Use a plain folder name without '/'.",
        )
