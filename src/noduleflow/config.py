"""One typed configuration tree for training: frozen dataclasses loaded from YAML plus a few flags.

Every field carries its help text in `metadata["help"]`; the CLI reads it with `field_help(...)`
so that a flag and its config key never describe themselves twice. Each section validates
itself in `__post_init__` and raises `ConfigError` (a `ValueError`) naming the key and the fix.
The resolved tree is written as `config.yaml` into every run folder and stored in checkpoints
as a plain dict (so that `torch.load(..., weights_only=True)` can read it back).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from noduleflow.errors import ConfigError

TASKS = ("digits", "classify", "malignancy", "segment")
"""Task names understood by `noduleflow train <task>` and by `task:` in a config file."""

METRICS = ("loss", "accuracy", "precision", "recall", "f1", "auc", "ap", "f1_best")
"""Per-epoch validation metrics; `run.monitor` names one of them as `val_<metric>` (ap and f1_best: two classes only)."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - `help` reads best at the call sites
    """A dataclass field with its help text; mutable defaults (tuples only here) are fine frozen."""
    return field(default=default, metadata={"help": help})


def _require(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed", fix=fix)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build and how to initialise it."""

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

        _require(self.name in list_models(), "model.name", self.name, f"Choose one of: {', '.join(list_models())}.")
        _require(self.width >= 1, "model.width", self.width, "Set model.width to a positive channel count such as 8.")
        _require(
            self.depth >= 1, "model.depth", self.depth, "Set model.depth to a positive number of blocks such as 4."
        )
        _require(
            self.finetune_depth >= 0,
            "model.finetune_depth",
            self.finetune_depth,
            "Use 0 (train all) or a positive block count.",
        )
        _require(
            all(s > 0 for s in self.input_size),
            "model.input_size",
            list(self.input_size),
            "Use positive sizes, e.g. [16, 24, 24].",
        )


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient handling."""

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
        _require(self.name in ("adamw", "sgd"), "optim.name", self.name, "Use 'adamw' or 'sgd'.")
        _require(self.lr > 0, "optim.lr", self.lr, "Set optim.lr to a positive learning rate such as 1e-3.")
        _require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "Use a momentum in [0, 1), e.g. 0.9.")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "Use 0 or a positive weight decay.")
        _require(self.scheduler in ("none", "cosine"), "optim.scheduler", self.scheduler, "Use 'none' or 'cosine'.")
        _require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "Use 0 (off) or a positive norm such as 1.0.")
        _require(
            self.accumulate >= 1, "optim.accumulate", self.accumulate, "Use 1 (no accumulation) or more micro-batches."
        )


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how they are batched."""

    root: str = _f("", "Dataset folder (LUNA16 layout) for 'classify' and 'malignancy'; unused by 'digits'.")
    cache: str = _f("", "Scan cache folder written by `noduleflow prepare`; empty: <root>/.noduleflow-cache.")
    spacing: tuple[float, ...] = _f(
        (),
        "Voxel spacing X, Y, Z in mm of the cache entries to read (as passed to `prepare --spacing`); empty: native.",
    )
    batch_size: int = _f(64, "Samples per micro-batch in each process.")
    num_workers: int = _f(0, "DataLoader worker processes (0 loads in the training process).")
    classes: tuple[int, ...] = _f((), "Digits only: which digits to keep, e.g. [0, 1]; empty keeps all ten.")
    val_fraction: float = _f(
        0.15, "Fraction held out for validation (digits: of images, stratified by class; CT: of series)."
    )
    test_fraction: float = _f(0.15, "Fraction held out for the final test of best.pt (as val_fraction); 0: no test.")
    extra_candidates: tuple[str, ...] = _f(
        (),
        "CT tasks: more CSVs in candidates.csv's format to add to it (`train detector` adds the segmentation's own candidates).",
    )
    extra_weight: int = _f(
        1, "CT tasks: how many times as often a balanced epoch draws an extra_candidates row as a candidates.csv row."
    )
    balance: int = _f(
        1, "CT tasks: negatives per positive in each epoch's sample order (book ch. 12); 0: plain shuffle."
    )
    epoch_samples: int = _f(0, "CT tasks: training samples per epoch; 0: the training set's size.")
    augment: bool = _f(True, "Random augmentation of training samples (after any cache).")
    context: int = _f(
        3,
        "segment: slices on each side of the segmented one that the 2D U-Net sees as channels (2 * context + 1 inputs); saved with the run, read back by `detect` and `export`.",
    )
    patch_mm: tuple[float, ...] = _f(
        (),
        "CT tasks: millimetres each patch spans, (D, H, W) = (Z, Y, X), resampled to the model's input size, so that scans of any spacing show the same anatomy; empty: the scan's own voxels.",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "extra_candidates", tuple(str(c) for c in self.extra_candidates))
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "Use a positive batch size such as 32.")
        _require(self.extra_weight >= 1, "data.extra_weight", self.extra_weight, "Use 1 (no extra weight) or more.")
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "Use 0 or a positive worker count.")
        _require(
            all(0 <= c <= 9 for c in self.classes) and len(set(self.classes)) == len(self.classes),
            "data.classes",
            list(self.classes),
            "List distinct digits 0-9, e.g. [0, 1], or leave it empty for all ten.",
        )
        _require(len(self.classes) != 1, "data.classes", list(self.classes), "Keep at least two digits, e.g. [0, 1].")
        _require(
            0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "Use a fraction in (0, 1) such as 0.15."
        )
        _require(
            0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
            "data.test_fraction",
            self.test_fraction,
            "Use a fraction in [0, 1) whose sum with data.val_fraction stays below 1.",
        )
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        _require(
            self.spacing == () or (len(self.spacing) == 3 and min(self.spacing) > 0),
            "data.spacing",
            list(self.spacing),
            "Give three positive millimetre values X, Y, Z, or leave it empty.",
        )
        object.__setattr__(self, "patch_mm", tuple(float(s) for s in self.patch_mm))
        _require(
            self.patch_mm == () or (len(self.patch_mm) == 3 and min(self.patch_mm) > 0),
            "data.patch_mm",
            list(self.patch_mm),
            "Give three positive millimetre values D, H, W (Z, Y, X), e.g. [32, 40, 40], or leave it empty.",
        )
        _require(
            self.context >= 0,
            "data.context",
            self.context,
            "Use 0 (the slice alone) or a positive slice count such as 3.",
        )
        _require(
            self.balance >= 0, "data.balance", self.balance, "Use 0 (plain shuffle) or a positive ratio such as 1."
        )
        _require(
            self.epoch_samples >= 0,
            "data.epoch_samples",
            self.epoch_samples,
            "Use 0 (whole training set) or a positive count.",
        )


@dataclass(frozen=True)
class RunConfig:
    """Run folder, length, devices and the speed policy applied by `train.wrap`."""

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
        _require(self.epochs >= 1, "run.epochs", self.epochs, "Train for at least 1 epoch.")
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "run.device",
            self.device,
            "Use 'auto', 'cpu', 'cuda' or 'cuda:N'.",
        )
        _require(
            self.amp in ("auto", "off", "bf16", "fp16"), "run.amp", self.amp, "Use 'auto', 'off', 'bf16' or 'fp16'."
        )
        _require(
            self.channels_last in ("auto", "on", "off"),
            "run.channels_last",
            self.channels_last,
            "Use 'auto', 'on' or 'off'.",
        )
        _require(
            self.monitor in {f"val_{m}" for m in METRICS},
            "run.monitor",
            self.monitor,
            f"Use one of: {', '.join(f'val_{m}' for m in METRICS)}.",
        )
        _require(
            self.threads >= 0, "run.threads", self.threads, "Use 0 (PyTorch's default) or a positive thread count."
        )
        _require(
            self.patience >= 0, "run.patience", self.patience, "Use 0 (no early stopping) or a positive epoch count."
        )
        _require(
            self.val_every >= 0, "run.val_every", self.val_every, "Use 1 (every epoch), more, or 0 (only the last)."
        )
        _require(
            "/" not in self.name and self.name not in (".", ".."),
            "run.name",
            self.name,
            "Use a plain folder name without '/'.",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; `noduleflow train` builds it from YAML and flags."""

    task: str = _f("digits", f"What to train: {', '.join(TASKS)}.")
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _require(self.task in TASKS, "task", self.task, f"Choose one of: {', '.join(TASKS)}.")
        _require(
            self.task == "digits" or self.data.root != "",
            "data.root",
            self.data.root,
            f"Task '{self.task}' reads a dataset: pass its folder (DATA) or set data.root.",
        )

    @property
    def run_name(self) -> str:
        """The run folder's name: `run.name`, or the task name when that is empty."""
        return self.run.name or self.task

    @property
    def run_dir(self) -> Path:
        return Path(self.run.runs_dir) / self.run_name


PRESETS: dict[str, dict[str, Any]] = {
    # the dataclass defaults are the digits recipe; one thread because the 8x8 net is too small to
    # split: on 2 idle cores 1 thread is within 20% of 2, on busy ones 5-10x faster (measured)
    "digits": {"run": {"threads": 1}},
    # nodule_net, not the book's nodule_classifier: ~3.6x the samples/s and far better F1 per minute (models/nodule_net.py)
    "classify": {
        "model": {"name": "nodule_net", "width": 16, "depth": 3},
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 32},
        "run": {"epochs": 10, "monitor": "val_f1_best"},
    },
    "malignancy": {
        "model": {"name": "nodule_net", "width": 16, "depth": 3, "finetune_depth": 1},
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 32},
        "run": {"epochs": 10, "monitor": "val_auc"},
    },
    "segment": {
        "model": {"name": "unet", "width": 8, "depth": 3},  # 2D, 7 context slices: train/segment_task.py
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 32, "epoch_samples": 2048},
        "run": {"epochs": 10},
    },
}
"""Per-task defaults layered under a config file: what `noduleflow train <task>` uses without --config."""


def resolve_config(
    task: str, *, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, resume: bool = False
) -> TrainConfig:
    """The config of `noduleflow train <task>`: task preset < YAML file < flags (dotted `overrides`).

    With `resume`, the run folder's saved config.yaml replaces preset and file (flags still apply,
    e.g. more epochs), so a resumed run trains exactly what it started with. With `model.init`
    naming a run folder (or a file in one), that run's model name, width and depth (and data.patch_mm,
    when set) replace the preset's, so `--init runs/classify` fits whatever architecture the classifier
    was trained with and is shown the same patches.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'", fix=f"Choose one of: {', '.join(TASKS)}.")
    overrides = {**(overrides or {}), "task": task}
    data = _read_yaml(Path(path)) if path is not None else {}
    if data.get("task", task) != task:
        raise ConfigError(
            f"{path} is a recipe for task '{data['task']}', not '{task}'",
            fix=f"Run `noduleflow train {data['task']} ...` or pick a config for '{task}'.",
        )
    cfg = config_from_dict(data, overrides=overrides, source=str(path or "defaults"), preset=PRESETS[task])
    inherited = _init_inherited(cfg.model.init)
    if (
        inherited and not resume
    ):  # fine-tuning: the source run's architecture and patches, unless file or flags say otherwise
        preset = {
            **PRESETS[task],
            **{section: {**PRESETS[task].get(section, {}), **values} for section, values in inherited.items()},
        }
        cfg = config_from_dict(data, overrides=overrides, source=str(path or "defaults"), preset=preset)
    if resume:
        saved = cfg.run_dir / "config.yaml"
        if not saved.is_file():
            from noduleflow.errors import CheckpointError

            raise CheckpointError(
                "has no config.yaml to resume from",
                path=cfg.run_dir,
                fix="Check --run (and run.runs_dir), or start the run without --resume.",
            )
        cfg = load_config(saved, overrides)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict of str/int/float/bool/list: safe for YAML and for weights_only checkpoints."""
    return _plain(asdict(cfg))


def config_from_dict(
    data: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    source: str = "config",
    preset: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build and validate a `TrainConfig`: defaults < `preset` < `data` (nested) < dotted `overrides` (`{"run.epochs": 3}`).

    Unknown keys and wrongly typed values raise `ConfigError` naming `source` and the key.
    """
    merged = config_to_dict(TrainConfig())
    _merge(merged, dict(preset or {}), prefix="", source="preset")
    _merge(merged, dict(data), prefix="", source=source)
    for dotted, value in (overrides or {}).items():
        _merge(merged, _nest(dotted.split("."), value), prefix="", source="command line")
    return _build(TrainConfig, merged, prefix="", source=source)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults when `path` is None) and apply dotted overrides."""
    if path is None:
        return config_from_dict({}, overrides=overrides)
    return config_from_dict(_read_yaml(Path(path)), overrides=overrides, source=str(path))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the file `--resume` reads back)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def parse_override(text: str) -> tuple[str, Any]:
    """`"run.epochs=3"` -> `("run.epochs", 3)`; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r} is not KEY=VALUE", fix="Write e.g. --set optim.lr=0.003.")
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def field_help(dotted: str) -> str:
    """The help text of a config field, e.g. `field_help("run.epochs")`; the CLI uses it for flags."""
    cls: Any = TrainConfig
    *sections, name = dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def _init_inherited(init: str) -> dict[str, dict[str, Any]]:
    """What a fine-tuned run takes from the run that `init` points into ({} if none): model.name/width/depth/input_size,
    and data.patch_mm when that run cut its patches in mm (the weights learned those patches)."""
    if not init:
        return {}
    source = Path(init)
    saved = (source if source.is_dir() else source.parent) / "config.yaml"
    if not saved.is_file():
        return {}
    found = _read_yaml(saved)
    model, data = found.get("model", {}), found.get("data", {})
    inherited = {"model": {k: model[k] for k in ("name", "width", "depth", "input_size") if model.get(k)}}
    if data.get("patch_mm"):
        inherited["data"] = {"patch_mm": data["patch_mm"]}
    return {section: values for section, values in inherited.items() if values}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(
            "config file not found", path=path, fix="Pass an existing YAML file, e.g. configs/debug.yaml."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"not valid YAML ({str(err).splitlines()[0]})", path=path, fix="Fix the YAML syntax."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "a config file must hold a mapping of sections", path=path, fix="Start from configs/debug.yaml."
        )
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


def _merge(into: dict[str, Any], new: Mapping[str, Any], *, prefix: str, source: str) -> None:
    """Deep-merge `new` into `into` (the defaults), refusing keys that the defaults lack."""
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if key not in into:
            known = ", ".join(f"{prefix}{k}" for k in into)
            raise ConfigError(f"{source}: unknown key '{dotted}'", fix=f"Use one of: {known}.")
        if isinstance(into[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: '{dotted}' must be a section of keys, got {value!r}", fix="Indent its keys under it."
                )
            _merge(into[key], value, prefix=f"{dotted}.", source=source)
        else:
            into[key] = value


def _build(cls: type, data: Mapping[str, Any], *, prefix: str, source: str) -> Any:
    """Instantiate dataclass `cls` from `data`, checking each value against the field's type."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint, value, key = hints[f.name], data[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value, prefix=f"{key}.", source=source)
        else:
            kwargs[f.name] = _coerce(value, hint, key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Accept YAML's natural types for a field: int for float, list for tuple; refuse the rest."""
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and type(value) is hint:
        return value
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        item = typing.get_args(hint)[0]
        allowed = {float: (int, float), int: int, str: str}[item]
        if all(isinstance(v, allowed) and not isinstance(v, bool) for v in value):
            return tuple(item(v) for v in value)
    items = {float: "numbers", int: "integers", str: "strings"}.get(
        typing.get_args(hint)[0] if typing.get_args(hint) else None, ""
    )
    expected = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(
        hint, f"a list of {items}"
    )
    raise ConfigError(f"{source}: '{key}' must be {expected}, got {value!r}", fix=f"Set {key} to {expected}.")
