"""`noduleflow train <task>`: each shared option declared once reaches its config key in every task; foreign keys fail."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from noduleflow.cli import app

SHARED = ["--config", "--epochs", "--run", "--resume", "--batch-size", "--lr", "--workers", "--device", "--seed"]
SHARED += ["--threads", "--progress", "--set"]


@pytest.mark.parametrize("task", ["digits", "classify", "malignancy", "segment"])
def test_every_train_command_takes_the_shared_options(task):
    result = CliRunner().invoke(app, ["train", task, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert [flag for flag in SHARED if flag not in result.output] == []


@pytest.fixture
def trained(monkeypatch):
    """The TrainConfig `noduleflow train` would train (training itself replaced)."""
    configs = []

    def train(cfg, resume=False):
        configs.append(cfg)
        return type("Result", (), {"describe": lambda self: "trained"})()

    monkeypatch.setattr("noduleflow.train.train", train)
    return configs


def test_flags_set_their_config_keys(run_cli, trained, tmp_path):
    code, out, _ = run_cli(
        *("train", "classify", tmp_path, "--epochs", "3", "--run", "x", "--batch-size", "4", "--lr", "0.01"),
        *("--workers", "1", "--device", "cpu", "--seed", "5", "--threads", "1", "--no-progress"),
        *("--set", "classify.balance=2", "--set", "run.patience=2"),
    )
    assert code in (0, None) and out.strip() == "trained"
    cfg = trained[0]
    assert (cfg.task, cfg.data.root, cfg.run.epochs, cfg.run.name, cfg.data.batch_size) == (
        "classify",
        str(tmp_path),
        3,
        "x",
        4,
    )
    assert (cfg.optim.lr, cfg.data.num_workers, cfg.run.device, cfg.run.seed, cfg.run.threads) == (0.01, 1, "cpu", 5, 1)
    assert (cfg.run.progress, cfg.classify.balance, cfg.run.patience) == (False, 2, 2)


def test_task_options_set_their_keys(run_cli, trained, tmp_path):
    assert run_cli("train", "digits", "--classes", "3,5")[0] in (0, None)
    assert run_cli("train", "malignancy", tmp_path, "--init", tmp_path / "c", "--finetune-depth", "2")[0] in (0, None)
    digits, malignancy = trained
    assert digits.digits.classes == (3, 5)
    assert (malignancy.model.init, malignancy.model.finetune_depth) == (str(tmp_path / "c"), 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.name=nodule_net"], "task 'segment' does not read 'model.name'"),
        (["--set", "classify.balance=2"], "task 'segment' does not read the 'classify' section"),
        (["--set", "data.patch_mm=[24,24,24]"], "task 'segment' does not read 'data.patch_mm'"),
        (["--set", "segment.contxt=2"], "unknown key 'segment.contxt'"),
    ],
)
def test_a_key_segment_does_not_read_is_one_error_line(run_cli, trained, tmp_path, args, message):
    code, _, err = run_cli("train", "segment", tmp_path, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert trained == []


def test_a_yaml_typo_or_foreign_section_names_the_file(run_cli, trained, tmp_path):
    recipe = tmp_path / "seg.yaml"
    recipe.write_text("task: segment\nsegment:\n  contxt: 2\n")
    code, _, err = run_cli("train", "segment", tmp_path, "-c", recipe)
    assert code == 2 and "seg.yaml: unknown key 'segment.contxt'" in err and "segment.context" in err
    recipe.write_text("task: segment\ndigits:\n  classes: [0, 1]\n")
    code, _, err = run_cli("train", "segment", tmp_path, "-c", recipe)
    assert code == 2 and "seg.yaml: task 'segment' does not read the 'digits' section" in err
    assert trained == []
