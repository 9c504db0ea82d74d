"""`noduleflow train digits` end to end through the CLI: it learns, it leaves a complete run folder,
and every user mistake ends in one `error:` line with exit status 2."""

import json

import pytest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _train(run_cli, runs, *args):
    return run_cli("train", "digits", "--no-progress", "--threads", "1", "--set", f"run.runs_dir={runs}", *args)


def test_all_ten_digits_learn(run_cli, runs):
    code, out, err = _train(run_cli, runs, "--epochs", "5", "--run", "ten")
    assert code == 0, err
    run = runs / "ten"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["train_loss"] < 0.5 * records[0]["train_loss"]
    assert max(r["val_accuracy"] for r in records) > 0.9
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["accuracy"] > 0.9
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(run.glob("events.out.tfevents.*"))
    assert {"config.yaml", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert "test loss" in out and "best best_epoch" in out


def test_ones_versus_zeros(run_cli, runs):
    code, _, err = _train(run_cli, runs, "--classes", "0,1", "--epochs", "3", "--run", "zero-one")
    assert code == 0, err
    assert json.loads((runs / "zero-one" / "test_metrics.json").read_text())["accuracy"] >= 0.95
    assert "classes:\n  - 0\n  - 1\n" in (runs / "zero-one" / "config.yaml").read_text()


def _one_error_line(code, out, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_task(run_cli):
    line = _one_error_line(*run_cli("train", "dance"))
    assert "unknown task 'dance'" in line and "digits, classify, malignancy" in line


def test_unknown_model(run_cli, runs):
    line = _one_error_line(*_train(run_cli, runs, "--set", "model.name=resnet", "--run", "m"))
    assert "resnet" in line and "digits_cnn" in line and "nodule_classifier" in line


def test_bad_classes_flag(run_cli, runs):
    line = _one_error_line(*_train(run_cli, runs, "--classes", "zero,one"))
    assert "--classes" in line


def test_existing_run_without_resume(run_cli, runs):
    (runs / "taken").mkdir()
    (runs / "taken" / "config.yaml").write_text("task: digits\n")
    line = _one_error_line(*_train(run_cli, runs, "--run", "taken", "--epochs", "1"))
    assert "already exists" in line and "--resume" in line and "--run" in line


def test_incompatible_init_checkpoint(run_cli, runs):
    other = runs / "ten" / "best.pt"  # digits_cnn of width 32 (from test_all_ten_digits_learn)
    if not other.exists():
        pytest.skip("needs the run of test_all_ten_digits_learn")
    line = _one_error_line(
        *_train(
            run_cli, runs, "--run", "init", "--set", f"model.init={other}", "--set", "model.width=16", "--epochs", "1"
        )
    )
    assert str(other) in line and "do not fit" in line


def test_corrupt_checkpoint_on_resume(run_cli, runs):
    code, _, err = _train(run_cli, runs, "--classes", "3,8", "--epochs", "2", "--run", "cut")
    assert code == 0, err
    last = runs / "cut" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    line = _one_error_line(*_train(run_cli, runs, "--run", "cut", "--resume", "--epochs", "3"))
    assert str(last) in line and "cannot read checkpoint" in line
