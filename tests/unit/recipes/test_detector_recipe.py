"""The detector recipe as YAML: the shipped file gives each part today's settings, `-c` takes another, typos fail first."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest

from noduleflow.config import resolve_config
from noduleflow.errors import ConfigError
from noduleflow.recipes.detector import MINED_CSV, PARTS, load_recipe

REPO = Path(__file__).parents[3]

# The recipe as it was a Python dict (RECIPE plus _COMMON) before it became detector.yaml, in today's key names.
BEFORE = {
    "segment": {
        "model.width": 16,
        "run.epochs": 24,  # 12 until 2026-12-07 (docs/decisions.md)
        "segment.epoch_samples": 2048,
        "data.batch_size": 32,
        "optim.lr": 2e-3,
        "data.num_workers": 1,
    },
    "classify": {
        "run.epochs": 8,
        "classify.epoch_samples": 12288,  # 6144 until 2026-12-07 (docs/decisions.md)
        "data.batch_size": 32,
        "optim.lr": 1e-3,
        "classify.balance": 1,
        "run.monitor": "val_ap",
        "run.val_every": 0,
        "classify.extra_weight": 10,
        "classify.patch_mm": (24.0, 24.0, 24.0),
    },
    "malignancy": {"run.epochs": 4, "data.batch_size": 16, "optim.lr": 1e-3, "model.finetune_depth": 2},
}


def _value(cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("part", PARTS)
def test_the_shipped_recipe_gives_each_part_the_settings_it_had_as_a_dict(part):
    cfg = resolve_config(part, recipe=load_recipe()[part], overrides={"data.root": "d"})
    assert {key: _value(cfg, key) for key in BEFORE[part]} == BEFORE[part]
    assert (cfg.data.val_fraction, cfg.data.test_fraction) == (0.1, 0.0)  # `common`, under every part
    # the rest is the task's preset, as before: e.g. the classifiers' architecture
    assert (cfg.model.name, cfg.model.depth) == ({"segment": "unet"}.get(part, "nodule_net"), 3)


def test_configs_detector_yaml_is_the_packaged_recipe():
    packaged = resources.files("noduleflow.recipes").joinpath("detector.yaml").read_bytes()
    assert (REPO / "configs" / "detector.yaml").read_bytes() == packaged
    text = packaged.decode()
    # the comments keep the decisions; their figures (CPMs, minutes) live in docs/decisions.md, where they are dated
    assert "docs/decisions.md" in text and "CPM" not in text and not re.search(r"\d+(\.\d+)? min\b", text)


def test_a_recipe_with_an_unknown_part_or_a_non_section_is_refused(tmp_path):
    for text in ("segmnt:\n  run: {epochs: 1}\n", "segment: 3\n", "- a list\n"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(text)
        with pytest.raises(ConfigError, match="common, segment, classify, malignancy"):
            load_recipe(recipe)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.fixture
def fake_training(monkeypatch):
    """train_detector with every heavy step replaced: returns the TrainConfig each part would have trained."""
    trained = []

    def train(cfg):
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        trained.append(cfg)

    index = SimpleNamespace(
        nodules=[SimpleNamespace(malignant=True), SimpleNamespace(malignant=False)],
        split=lambda **kwargs: SimpleNamespace(test=()),
    )
    monkeypatch.setattr("noduleflow.train.train", train)
    monkeypatch.setattr("noduleflow.data.prepare_cache.prepare", lambda data, progress: None)
    monkeypatch.setattr("noduleflow.data.luna16.load_index", lambda data: index)
    monkeypatch.setattr("noduleflow.export.export_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        "noduleflow.recipes.measured.fit_run_measured", lambda *args, **kwargs: {"nodules": 2, "malignant": 1}
    )
    monkeypatch.setattr(
        "noduleflow.recipes.mining.mine_candidates",
        lambda *args, progress: {"candidates": 0, "scans": 0, "of": 0, "positives": 0},
    )
    return trained


def test_train_detector_trains_each_part_of_another_recipe_scaled(tmp_path, fake_training):
    from noduleflow.recipes.detector import train_detector

    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "common: {optim: {lr: 0.005}}\n"
        "segment: {model: {width: 4}, segment: {epoch_samples: 1000, context: 2}}\n"
        "classify: {classify: {epoch_samples: 10}}\n"
    )
    overrides = {"classify": {"run.epochs": 3}}
    train_detector(tmp_path / "data", runs_dir=tmp_path, recipe=recipe, scale=0.5, progress=False, overrides=overrides)
    segment, classify, malignancy = fake_training
    assert (segment.model.width, segment.segment.context, segment.optim.lr) == (4, 2, 0.005)
    assert segment.segment.epoch_samples == 500  # scaled
    assert classify.classify.epoch_samples == 32  # scaled, but never below one batch (the preset's 32)
    assert classify.run.epochs == 3 and classify.classify.extra_candidates == (str(tmp_path / "detector" / MINED_CSV),)
    assert malignancy.model.init == str(tmp_path / "detector" / "classify") and malignancy.malignancy.epoch_samples == 0
    assert {cfg.run.runs_dir for cfg in fake_training} == {str(tmp_path / "detector")}


def test_a_typo_in_a_later_part_fails_before_any_part_trains(tmp_path, fake_training):
    from noduleflow.recipes.detector import train_detector

    recipe = tmp_path / "typo.yaml"
    recipe.write_text("malignancy: {run: {epoch: 3}}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml \(malignancy\): unknown key 'run.epoch'"):
        train_detector(tmp_path / "data", runs_dir=tmp_path, recipe=recipe, progress=False)
    assert fake_training == []


def test_train_detector_c_takes_another_recipe(tmp_path, fake_training, run_cli):
    recipe = tmp_path / "other.yaml"
    recipe.write_text("segment: {run: {epochs: 2}}\nclassify: {classify: {balance: 3}}\n")
    code, out, _ = run_cli(
        "train", "detector", tmp_path / "data", "-c", recipe, "--runs-dir", tmp_path, "--no-progress"
    )
    assert code in (0, None) and "trained in" in out
    assert [cfg.task for cfg in fake_training] == list(PARTS)
    assert (fake_training[0].run.epochs, fake_training[1].classify.balance) == (2, 3)
    recipe.write_text("segment: {model: {name: nodule_net}}\n")
    code, _, err = run_cli("train", "detector", tmp_path / "data", "-c", recipe, "--runs-dir", tmp_path)
    assert code == 2 and "task 'segment' does not read 'model.name'" in err
