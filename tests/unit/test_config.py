"""Per-task sections: each task reads only its own keys, old runs' config.yaml still load, settings round-trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.config import (
    NOT_READ,
    SECTIONS,
    TASKS,
    config_to_dict,
    load_config,
    resolve_config,
    save_config,
)
from noduleflow.errors import ConfigError

# A segment run's config.yaml as written before the per-task sections (every DataConfig key, no data.context yet).
OLD_SEGMENT = """task: segment
model: {name: unet, width: 16, depth: 3, init: '', finetune_depth: 1, input_size: []}
optim: {name: adamw, lr: 0.002, momentum: 0.9, weight_decay: 0.0, scheduler: cosine, grad_clip: 0.0, accumulate: 1}
data: {root: /data, cache: '', spacing: [], batch_size: 32, num_workers: 0, classes: [], val_fraction: 0.1,
  test_fraction: 0.0, extra_candidates: [], extra_weight: 1, balance: 1, epoch_samples: 40, augment: true, patch_mm: []}
run: {name: segment, runs_dir: runs/tiny, epochs: 1, seed: 0, device: auto, amp: auto, compile: false,
  channels_last: auto, monitor: val_loss, patience: 0, val_every: 1, progress: false, threads: 2}
"""


def _root(task: str) -> dict:
    return {} if task == "digits" else {"data.root": "d"}


def test_an_old_segment_config_loads_with_its_keys_moved(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_SEGMENT)
    cfg = load_config(tmp_path / "config.yaml")
    assert (cfg.segment.epoch_samples, cfg.segment.context, cfg.model.name, cfg.model.width) == (40, 3, "unet", 16)
    assert cfg.segment.crop == (64, 64) and cfg.classify is None
    (tmp_path / "config.yaml").write_text(OLD_SEGMENT.replace("augment: true,", "augment: true, context: 2,"))
    assert load_config(tmp_path / "config.yaml").segment.context == 2  # runs saved after data.context existed


def test_an_old_classify_config_keeps_its_patches_and_extra_candidates(tmp_path):
    old = OLD_SEGMENT.replace("task: segment", "task: classify").replace("name: unet", "name: nodule_net")
    old = old.replace("extra_candidates: []", "extra_candidates: [m.csv]").replace(
        "patch_mm: []", "patch_mm: [24, 24, 24]"
    )
    (tmp_path / "config.yaml").write_text(old.replace("extra_weight: 1", "extra_weight: 10, context: 3"))
    cfg = load_config(tmp_path / "config.yaml")
    assert (cfg.classify.patch_mm, cfg.classify.extra_candidates, cfg.classify.extra_weight) == (
        (24.0, 24.0, 24.0),
        ("m.csv",),
        10,
    )
    assert cfg.segment is None and "segment" not in config_to_dict(cfg)


def test_an_old_detector_run_loads_for_detect(tmp_path):
    """The detect side: load_segmentation reads the context of a run saved before segment.context."""
    from noduleflow.detect.models import load_segmentation
    from noduleflow.models.unet import segmentation_unet
    from noduleflow.train.checkpoint import save_checkpoint

    (tmp_path / "segment").mkdir()
    (tmp_path / "segment" / "config.yaml").write_text(OLD_SEGMENT.replace("width: 16", "width: 4"))
    save_checkpoint({"model": segmentation_unet(4, 3, 3).state_dict()}, tmp_path / "segment" / "best.pt")
    assert load_segmentation(tmp_path / "segment").context == 3


def test_an_old_key_that_never_acted_is_refused_unless_it_holds_its_old_default(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_SEGMENT.replace("patch_mm: []", "patch_mm: [24, 24, 24]"))
    with pytest.raises(ConfigError, match="task 'segment' does not read 'data.patch_mm'") as err:
        load_config(tmp_path / "config.yaml")
    assert "config.yaml" in err.value.message and "classify.patch_mm" in err.value.fix


@pytest.mark.parametrize("task", TASKS)
def test_another_tasks_section_is_refused_in_a_file_and_on_the_command_line(tmp_path, task):
    other = next(t for t in TASKS if t != task)
    key = dataclasses.fields(SECTIONS[other])[0].name
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": task, other: {key: getattr(SECTIONS[other](), key)}}))
    with pytest.raises(ConfigError, match=f"r.yaml: task '{task}' does not read the '{other}' section"):
        resolve_config(task, path=recipe, overrides=_root(task))
    with pytest.raises(ConfigError, match=f"command line: task '{task}' does not read the '{other}' section"):
        resolve_config(task, overrides={**_root(task), f"{other}.{key}": getattr(SECTIONS[other](), key)})


def test_keys_of_shared_sections_a_task_ignores_are_refused_and_not_saved():
    assert NOT_READ["segment"] == ("model.name", "model.input_size")
    with pytest.raises(ConfigError, match="task 'segment' does not read 'model.name'"):
        resolve_config("segment", overrides={"data.root": "d", "model.name": "nodule_net"})
    with pytest.raises(ConfigError, match="task 'digits' does not read 'data.root'"):
        resolve_config("digits", overrides={"data.root": "d"})
    cfg = resolve_config("segment", overrides={"data.root": "d", "model.name": "unet"})  # its own value: harmless
    tree = config_to_dict(cfg)
    assert "name" not in tree["model"] and "input_size" not in tree["model"] and cfg.model.name == "unet"
    assert list(tree) == ["task", "model", "optim", "data", "run", "segment"]


def test_a_yaml_typo_names_the_file_the_key_and_the_keys_there_are(tmp_path):
    recipe = tmp_path / "seg.yaml"
    recipe.write_text("task: segment\nsegment:\n  augment: {rotate: 3}\n")
    with pytest.raises(ConfigError, match="seg.yaml: unknown key 'segment.augment.rotate'") as err:
        resolve_config("segment", path=recipe, overrides={"data.root": "d"})
    assert "segment.augment.rotate_deg" in err.value.fix


@settings(max_examples=25, deadline=None)
@given(
    context=st.integers(0, 5),
    crop=st.lists(st.integers(8, 128), min_size=2, max_size=2),
    alpha=st.floats(0, 1),
    lung_fraction=st.floats(0, 0.95),
    noise=st.floats(0, 100),
)
def test_segment_settings_are_saved_with_the_run_and_read_back(
    tmp_path_factory, context, crop, alpha, lung_fraction, noise
):
    overrides = {"data.root": "d", "segment.context": context, "segment.crop": crop, "segment.tversky_alpha": alpha}
    overrides.update({"segment.lung_fraction": lung_fraction, "segment.augment.noise_hu": noise})
    cfg = resolve_config("segment", overrides=overrides)
    path = tmp_path_factory.mktemp("run") / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert (cfg.segment.context, cfg.segment.crop, cfg.segment.augment.noise_hu) == (context, tuple(crop), noise)
