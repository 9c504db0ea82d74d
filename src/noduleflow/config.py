"""One typed configuration tree for training: frozen dataclasses loaded from YAML plus a few flags.

The tree has the sections every task reads (`model`, `optim`, `data`, `run`) and one section per
task for what only that task reads (`digits`, `classify`, `malignancy`, `segment`); a config holds
its own task's section only. A key that the task does not read (another task's section, or a field
in `NOT_READ`) is refused rather than silently ignored, so that a setting either acts or fails.

Every field carries its help text in `metadata["help"]`; the CLI reads it with `field_help(...)`
so that a flag and its config key never describe themselves twice. Loading is pydantic's (strict
JSON-mode validation of these stdlib dataclasses, unknown keys forbidden), and its errors become
`ConfigError`s naming the key and the fix; each section checks its ranges in `__post_init__`. The
resolved tree is written as `config.yaml` into every run folder and stored in checkpoints as a plain
dict (so that `torch.load(..., weights_only=True)` can read it back). Runs saved before the per-task
sections (their task's keys under `data:`) still load: `_legacy` moves those keys on read, from a
file or a flag alike, so that old runs, recipes and scripts (`--set data.epoch_samples=8`) keep working.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from noduleflow.config_sections import (
    METRICS,
    SECTIONS,
    STRICT,
    AugmentConfig,
    ClassifyConfig,
    DataConfig,
    DigitsConfig,
    MalignancyConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SegmentConfig,
    require,
)
from noduleflow.errors import ConfigError

__all__ = [  # the sections are defined in config_sections and re-exported here, the one import path
    "METRICS",
    "NOT_READ",
    "PRESETS",
    "SECTIONS",
    "TASKS",
    "AugmentConfig",
    "ClassifyConfig",
    "DataConfig",
    "DigitsConfig",
    "MalignancyConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SegmentConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "field_help",
    "load_config",
    "parse_override",
    "resolve_config",
    "save_config",
]

TASKS = ("digits", "classify", "malignancy", "segment")
"""Task names understood by `noduleflow train <task>` and by `task:` in a config file."""

NOT_READ: dict[str, tuple[str, ...]] = {
    "digits": ("data.root", "data.cache", "data.spacing"),  # the digits come with scikit-learn
    "classify": (),
    "malignancy": (),
    "segment": ("model.name", "model.input_size"),  # always the 2D U-Net (models.unet.segmentation_unet)
}
"""Keys of the shared sections that a task ignores: refused unless they hold the task's own value, left out of its config.yaml."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; `noduleflow train` builds it from YAML and flags."""

    __pydantic_config__ = STRICT

    task: str = field(default="digits", metadata={"help": f"What to train: {', '.join(TASKS)}."})
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    digits: DigitsConfig | None = None
    classify: ClassifyConfig | None = None
    malignancy: MalignancyConfig | None = None
    segment: SegmentConfig | None = None

    def __post_init__(self) -> None:
        require(self.task in TASKS, "task", self.task, f"Choose one of: {', '.join(TASKS)}.")
        for name in TASKS:
            if name == self.task and getattr(self, name) is None:
                object.__setattr__(self, name, SECTIONS[name]())
            elif name != self.task and getattr(self, name) is not None:
                raise ConfigError(f"task '{self.task}' does not read the '{name}' section", fix=_foreign_fix(name))
        require(
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
    # split: on 2 idle cores 1 thread is within 20% of 2, on busy ones faster (docs/decisions.md)
    "digits": {"run": {"threads": 1}},
    # nodule_net, not the book's nodule_classifier: more samples/s and a better F1 per minute (models/nodule_net.py)
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
        "model": {"name": "unet", "width": 8, "depth": 3},  # 2D, context slices in: train/segment_task.py
        "optim": {"lr": 1e-3},
        "data": {"batch_size": 32},
        "run": {"epochs": 10},
    },
}
"""Per-task defaults of the shared sections, layered under a config file: what `noduleflow train <task>` uses without --config."""


def resolve_config(
    task: str,
    *,
    path: str | Path | None = None,
    recipe: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    source: str | None = None,
) -> TrainConfig:
    """The config of `noduleflow train <task>`: task preset < YAML file (or `recipe`, the same as a dict) < flags.

    `overrides` are dotted keys (`{"run.epochs": 3}`). With `resume`, the run folder's saved config.yaml
    replaces preset and file (flags still apply, e.g. more epochs), so a resumed run trains exactly what
    it started with. With `model.init` naming a run folder (or a file in one), that run's model name,
    width, depth and input_size (and patch_mm, when set) replace the preset's, so `--init runs/classify`
    fits whatever architecture the classifier was trained with and is shown the same patches.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'", fix=f"Choose one of: {', '.join(TASKS)}.")
    overrides = {**(overrides or {}), "task": task}
    data = _read_yaml(Path(path)) if path is not None else dict(recipe or {})
    source = source or str(path or "defaults")
    if data.get("task", task) != task:
        raise ConfigError(
            f"{source} is a recipe for task '{data['task']}', not '{task}'",
            fix=f"Run `noduleflow train {data['task']} ...` or pick a config for '{task}'.",
        )
    cfg = config_from_dict(data, overrides=overrides, source=source, preset=PRESETS[task])
    inherited = _init_inherited(cfg.model.init, task)
    if (
        inherited and not resume
    ):  # fine-tuning: the source run's architecture and patches, unless file or flags say otherwise
        preset = deep_merge(deep_merge({}, PRESETS[task]), inherited)
        cfg = config_from_dict(data, overrides=overrides, source=source, preset=preset)
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
    """Plain nested dict of str/int/float/bool/list, without what the task does not read: safe for YAML and checkpoints."""
    tree = _plain(asdict(cfg))
    for name in TASKS:
        if tree[name] is None:
            del tree[name]
    for dotted in NOT_READ[cfg.task]:
        section, key = dotted.split(".")
        del tree[section][key]
    return tree


def config_from_dict(
    data: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    source: str = "config",
    preset: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build and validate a `TrainConfig`: defaults < `preset` < `data` (nested) < dotted `overrides` (`{"run.epochs": 3}`).

    Unknown keys, keys the task does not read and wrongly typed values raise `ConfigError` naming `source` and the key.
    """
    overrides = dict(overrides or {})
    task = overrides.get("task", data.get("task", "digits"))
    if task not in TASKS:
        raise ConfigError(f"{source}: unknown task {task!r}", fix=f"Choose one of: {', '.join(TASKS)}.")
    base = deep_merge({"task": task, task: {}}, preset or {})
    merged = deep_merge({}, base)
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        deep_merge(nested, _nest(dotted.split("."), value))
    layers = [(source, _legacy(data, task, source)), ("command line", _legacy(nested, task, "command line"))]
    for where, layer in layers:
        _refuse_unread(layer, task, where, base)
        deep_merge(merged, layer)
    return _validate(merged, layers)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML recipe or a run's config.yaml, over its task's preset (or the defaults when `path` is None), then dotted overrides."""
    if path is None:
        return config_from_dict({}, overrides=overrides)
    data = _read_yaml(Path(path))
    task = (overrides or {}).get("task", data.get("task", "digits"))
    return config_from_dict(data, overrides=overrides, source=str(path), preset=PRESETS.get(task))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the file `--resume`, `detect` and `export` read back)."""
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
        cls = _section_type(typing.get_type_hints(cls)[section])
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def _section_type(hint: Any) -> Any:
    """`X | None` -> X (the optional task sections); any other hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _foreign_fix(section: str) -> str:
    return f"Remove it: only `noduleflow train {section}` reads it."


_MOVED = {
    "classes": (),
    "extra_candidates": (),
    "extra_weight": 1,
    "balance": 1,
    "epoch_samples": 0,
    "context": 3,
    "patch_mm": (),
}
"""Keys that lived under `data:` before the per-task sections, with their old defaults."""


def _legacy(layer: Mapping[str, Any], task: str, source: str) -> dict[str, Any]:
    """`layer` with old `data.<key>`s (runs saved before the task sections, old scripts) moved to `<task>.<key>`.

    A moved key that the task does not read is dropped when it holds its old default (every old
    config.yaml lists them all) and refused otherwise: it never acted, and still would not.
    """
    layer = dict(layer)
    data = layer.get("data")
    if not isinstance(data, Mapping) or not set(data) & set(_MOVED):
        return layer
    own = {f.name for f in dataclasses.fields(SECTIONS[task])}
    section = dict(layer.get(task) or {})
    for key in set(data) & set(_MOVED):
        if key in own:
            section.setdefault(key, data[key])
        elif _plain(data[key]) != _plain(_MOVED[key]):
            readers = [t for t in TASKS if key in {f.name for f in dataclasses.fields(SECTIONS[t])}]
            raise ConfigError(
                f"{source}: task '{task}' does not read 'data.{key}'",
                fix=f"Remove it: only {' and '.join(readers)} read it (as {readers[0]}.{key}).",
            )
    layer["data"] = {k: v for k, v in data.items() if k not in _MOVED}
    layer[task] = section
    return layer


def _refuse_unread(layer: Mapping[str, Any], task: str, source: str, base: Mapping[str, Any]) -> None:
    """Refuse another task's section, and a `NOT_READ` key that would change what the task's preset says."""
    for name in TASKS:
        if name != task and name in layer:
            raise ConfigError(f"{source}: task '{task}' does not read the '{name}' section", fix=_foreign_fix(name))
    for dotted in NOT_READ[task]:
        section, key = dotted.split(".")
        given = layer.get(section)
        if isinstance(given, Mapping) and key in given:
            default = base.get(section, {}).get(key, _default_of(section, key))
            if _plain(given[key]) != _plain(default):
                raise ConfigError(
                    f"{source}: task '{task}' does not read '{dotted}' (set to {given[key]!r})",
                    fix=f"Remove it; `noduleflow train {task}` ignores it.",
                )


def _default_of(section: str, key: str) -> Any:
    cls = _section_type(typing.get_type_hints(TrainConfig)[section])
    return getattr(cls(), key)


def _validate(tree: Mapping[str, Any], layers: list[tuple[str, Mapping[str, Any]]]) -> TrainConfig:
    """`tree` as a TrainConfig, checked by pydantic (JSON's types: an int is a number, a list a tuple; no casts).

    An error names the last of `layers` (source, nested keys) that set the key at fault.
    """
    from pydantic import ValidationError

    try:
        return _adapter().validate_json(json.dumps(tree, default=repr), strict=True)
    except ValidationError as err:
        error = err.errors()[0]
        path = [part for part in error["loc"] if not isinstance(part, int)]
        source = next((where for where, layer in reversed(layers) if _holds(layer, path)), layers[0][0])
        raise _config_error(error, source) from None


@functools.cache
def _adapter() -> Any:
    """pydantic's validator of TrainConfig, built once (pydantic is imported on first use: `--help` stays quick)."""
    from pydantic import TypeAdapter

    return TypeAdapter(TrainConfig)


def _holds(tree: Any, path: list[Any]) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return True


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dataclass_type": "a section of keys",
    "tuple_type": "a list",
    "list_type": "a list",
}
_ITEMS = {"int_type": "integers", "float_type": "numbers", "string_type": "strings"}


def _config_error(error: Mapping[str, Any], source: str) -> ConfigError:
    """One pydantic error as the `ConfigError` a user reads: the key, what it must be, and the fix."""
    wrapped = (error.get("ctx") or {}).get("error")
    if isinstance(wrapped, ConfigError):  # a section's own range check (__post_init__)
        return wrapped
    path = [str(part) for part in error["loc"] if not isinstance(part, int)]
    key, given = ".".join(path), error.get("input")
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        cls: Any = TrainConfig
        for section in path[:-1]:
            cls = _section_type(typing.get_type_hints(cls)[section])
        prefix = "".join(f"{p}." for p in path[:-1])
        known = ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(cls))
        return ConfigError(f"{source}: unknown key '{key}'", fix=f"Use one of: {known}.")
    if len(path) < len(error["loc"]):  # an item of a list
        expected = f"a list of {_ITEMS.get(error['type'], 'values')}"
    else:
        expected = _EXPECTED.get(error["type"], error["msg"].lower().removeprefix("input should be "))
    return ConfigError(f"{source}: '{key}' must be {expected}, got {given!r}", fix=f"Set {key} to {expected}.")


def _init_inherited(init: str, task: str) -> dict[str, dict[str, Any]]:
    """What a fine-tuned run takes from the run that `init` points into ({} if none): model.name/width/depth/input_size,
    and the patch_mm of a run that cut its patches in mm (the weights learned those patches)."""
    if not init:
        return {}
    source = Path(init)
    saved = (source if source.is_dir() else source.parent) / "config.yaml"
    if not saved.is_file():
        return {}
    found = _read_yaml(saved)
    model = found.get("model", {})
    patch_mm = (found.get(found.get("task", ""), None) or {}).get("patch_mm") or found.get("data", {}).get("patch_mm")
    inherited = {"model": {k: model[k] for k in ("name", "width", "depth", "input_size") if model.get(k)}}
    if patch_mm and "patch_mm" in {f.name for f in dataclasses.fields(SECTIONS[task])}:
        inherited[task] = {"patch_mm": patch_mm}
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


def deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `new` into `into` (a section replaces a value, not the reverse: validation names the bad key)."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = deep_merge({}, value) if isinstance(value, Mapping) else value
    return into
