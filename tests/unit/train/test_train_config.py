"""The config tree: defaults, presets, YAML recipes, dotted overrides, and errors that name the fix."""

from pathlib import Path

import pytest
import yaml

from noduleflow.config import (
    PRESETS,
    TASKS,
    AugmentConfig,
    DataConfig,
    DigitsConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    field_help,
    load_config,
    parse_override,
    resolve_config,
    save_config,
)
from noduleflow.errors import CheckpointError, ConfigError

CONFIGS = sorted(p for p in (Path(__file__).parents[3] / "configs").glob("*.yaml") if p.name != "detector.yaml")
# detector.yaml is a recipe of three parts, not one task's config: tests/unit/recipes/test_detector_recipe.py


def test_defaults_are_the_digits_recipe():
    cfg = resolve_config("digits")
    assert (cfg.task, cfg.model.name, cfg.run_name, cfg.run.threads) == ("digits", "digits_cnn", "digits", 1)
    assert load_config(CONFIGS[0].parent / "digits.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_loads(path):
    task = yaml.safe_load(path.read_text())["task"]
    cfg = load_config(path, {} if task == "digits" else {"data.root": "somewhere"})
    assert cfg.task in TASKS and getattr(cfg, cfg.task) is not None


def test_presets_cover_every_task():
    assert set(PRESETS) == set(TASKS)
    cfg = resolve_config("classify", overrides={"data.root": "d"})
    assert (cfg.model.name, cfg.model.width, cfg.run.monitor) == ("nodule_net", 16, "val_f1_best")


def test_overrides_beat_file_and_preset(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: digits\nrun: {epochs: 7, seed: 3}\noptim: {lr: 0.01}\n")
    cfg = resolve_config("digits", path=recipe, overrides={"run.epochs": 2, "digits.classes": [0, 1]})
    assert (cfg.run.epochs, cfg.run.seed, cfg.optim.lr, cfg.digits.classes) == (2, 3, 0.01, (0, 1))


def test_yaml_ints_become_floats_and_lists_tuples():
    cfg = config_from_dict({"task": "classify", "optim": {"lr": 1}, "data": {"root": "d", "spacing": [1, 1, 2]}})
    assert isinstance(cfg.optim.lr, float) and cfg.data.spacing == (1.0, 1.0, 2.0)


def test_round_trip_through_yaml(tmp_path):
    cfg = resolve_config("digits", overrides={"digits.classes": [3, 5], "run.name": "x"})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: OptimConfig(lr=-1.0), "optim.lr"),
        (lambda: OptimConfig(name="adam"), "optim.name"),
        (lambda: OptimConfig(accumulate=0), "optim.accumulate"),
        (lambda: DigitsConfig(classes=(3,)), "digits.classes"),
        (lambda: DigitsConfig(classes=(1, 12)), "digits.classes"),
        (lambda: DataConfig(val_fraction=0.6, test_fraction=0.5), "data.test_fraction"),
        (lambda: RunConfig(monitor="val_dice"), "run.monitor"),
        (lambda: RunConfig(amp="fp8"), "run.amp"),
        (lambda: RunConfig(name="a/b"), "run.name"),
        (lambda: TrainConfig(task="classify"), "data.root"),
        (lambda: AugmentConfig(low_res=1.5), "segment.augment.low_res"),
        (lambda: AugmentConfig(low_res_factor=(0.5, 2.0)), "segment.augment.low_res_factor"),
        (lambda: AugmentConfig(low_res_factor=(2.0,)), "segment.augment.low_res_factor"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(build, key):
    with pytest.raises(ConfigError) as err:
        build()
    assert key in err.value.message and err.value.fix
    assert isinstance(err.value, ValueError)


def test_unknown_model_name_lists_the_registry():
    with pytest.raises(ConfigError, match="unet"):
        config_from_dict({"model": {"name": "vgg"}})


def test_unknown_key_names_the_file_and_the_known_keys(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("run:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(recipe)
    assert "bad.yaml" in err.value.message and "'run.epoch'" in err.value.message and "run.epochs" in err.value.message


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="'run.epochs' must be an integer"):
        config_from_dict({"run": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="must be true or false"):
        config_from_dict({}, overrides={"data.augment": 1})


def test_unknown_task_and_mismatched_recipe(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'dance'"):
        resolve_config("dance")
    recipe = tmp_path / "c.yaml"
    recipe.write_text("task: classify\n")
    with pytest.raises(ConfigError, match="recipe for task 'classify'"):
        resolve_config("digits", path=recipe)


def test_resume_reads_the_saved_config(tmp_path):
    first = resolve_config("digits", overrides={"run.runs_dir": str(tmp_path), "run.seed": 5, "run.epochs": 1})
    first.run_dir.mkdir(parents=True)
    save_config(first, first.run_dir / "config.yaml")
    resumed = resolve_config("digits", overrides={"run.runs_dir": str(tmp_path), "run.epochs": 4}, resume=True)
    assert (resumed.run.seed, resumed.run.epochs) == (5, 4)
    with pytest.raises(CheckpointError, match="no config.yaml"):
        resolve_config("digits", overrides={"run.runs_dir": str(tmp_path), "run.name": "other"}, resume=True)


def test_parse_override_and_field_help():
    assert parse_override("optim.lr=0.01") == ("optim.lr", 0.01)
    assert parse_override("digits.classes=[0, 1]") == ("digits.classes", [0, 1])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    assert "Epochs" in field_help("run.epochs")


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_init_inherits_the_source_runs_architecture(tmp_path):
    source = resolve_config(
        "classify",
        overrides={
            "data.root": "d",
            "model.width": 4,
            "model.depth": 3,
            "model.input_size": [16, 24, 24],
            "run.runs_dir": str(tmp_path),
        },
    )
    source.run_dir.mkdir(parents=True)
    save_config(source, source.run_dir / "config.yaml")
    cfg = resolve_config("malignancy", overrides={"data.root": "d", "model.init": str(source.run_dir)})
    assert (cfg.model.name, cfg.model.width, cfg.model.depth, cfg.model.input_size) == (
        "nodule_net",
        4,
        3,
        (16, 24, 24),
    )
    cfg = resolve_config(
        "malignancy", overrides={"data.root": "d", "model.init": str(source.run_dir / "best.pt"), "model.width": 16}
    )
    assert (cfg.model.width, cfg.model.depth) == (16, 3)  # a flag still wins


def test_init_inherits_the_source_runs_patch_mm(tmp_path):
    """Weights that learned 24 mm patches keep being shown 24 mm patches when fine-tuned, unless a flag says otherwise."""
    source = resolve_config(
        "classify", overrides={"data.root": "d", "classify.patch_mm": [24, 24, 24], "run.runs_dir": str(tmp_path)}
    )
    source.run_dir.mkdir(parents=True)
    save_config(source, source.run_dir / "config.yaml")
    cfg = resolve_config("malignancy", overrides={"data.root": "d", "model.init": str(source.run_dir)})
    assert cfg.malignancy.patch_mm == (24.0, 24.0, 24.0) and cfg.model.name == "nodule_net"
    cfg = resolve_config(
        "malignancy",
        overrides={"data.root": "d", "model.init": str(source.run_dir), "malignancy.patch_mm": [32, 32, 32]},
    )
    assert cfg.malignancy.patch_mm == (32.0, 32.0, 32.0)


def test_extra_candidates_are_a_list_of_paths():
    tree = {"task": "classify", "data": {"root": "d"}}
    cfg = config_from_dict({**tree, "classify": {"extra_candidates": ["runs/detector/mined_candidates.csv"]}})
    assert cfg.classify.extra_candidates == ("runs/detector/mined_candidates.csv",)
    with pytest.raises(ConfigError, match="'classify.extra_candidates' must be a list of strings"):
        config_from_dict({**tree, "classify": {"extra_candidates": [3]}})


def test_patch_mm_takes_three_positive_millimetres():
    cfg = resolve_config("classify", overrides={"data.root": "d", "classify.patch_mm": [32, 40, 40]})
    assert cfg.classify.patch_mm == (32.0, 40.0, 40.0) and config_from_dict(config_to_dict(cfg)) == cfg
    for bad in ([32, 40], [32, 0, 40]):
        with pytest.raises(ConfigError, match="classify.patch_mm"):
            resolve_config("classify", overrides={"data.root": "d", "classify.patch_mm": bad})


def test_input_size_builds_the_patch_classifier_it_names():
    from noduleflow.models import build_model, input_size_of

    cfg = resolve_config("classify", overrides={"data.root": "d", "model.input_size": [16, 24, 24]})
    assert cfg.model.input_size == (16, 24, 24) and config_from_dict(config_to_dict(cfg)) == cfg
    assert input_size_of(build_model(cfg.model, in_channels=1, num_classes=2)) == (16, 24, 24)
    default = resolve_config("classify", overrides={"data.root": "d"})
    assert input_size_of(build_model(default.model, in_channels=1, num_classes=2)) == (16, 32, 32)
    with pytest.raises(ConfigError, match="model.input_size"):
        resolve_config("classify", overrides={"data.root": "d", "model.input_size": [16, 0, 24]})
    odd = resolve_config("classify", overrides={"data.root": "d", "model.input_size": [16, 20, 20]})
    with pytest.raises(ConfigError, match="divisible by 2"):
        build_model(odd.model, in_channels=1, num_classes=2)
