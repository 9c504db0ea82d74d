"""A training run whose folder cannot be written, or whose disk fills mid-run, stops with one `error:` line and
exit 2, before its first epoch when it can, and keeps the last checkpoint it wrote loadable and resumable."""

from __future__ import annotations

import errno
import json
import os

import pytest

from noduleflow import files as files_module
from noduleflow.config import resolve_config
from noduleflow.errors import OutputError
from noduleflow.train import checkpoint, train
from noduleflow.train.checkpoint import load_checkpoint
from noduleflow.train.runlog import read_metrics

FLAGS = ["--classes", "0,1", "--epochs", "2", "--batch-size", "64", "--workers", "0", "--threads", "1", "--no-progress"]


def _full_disk_after(monkeypatch, saves: int, failure: BaseException) -> list:
    """torch.save works `saves` times, then fails as a full disk makes it fail; returns the files it wrote."""
    real, written = checkpoint.torch.save, []

    def save(obj, f):
        if len(written) >= saves:
            f.write(b"PK\x03\x04 half a zip")
            raise failure
        written.append(f)
        real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    return written


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/7: file write failed"
        ),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch", "os"],
)
def test_a_disk_that_fills_in_epoch_2_is_one_error_line_and_epoch_1_resumes(tmp_path, monkeypatch, failure, run_cli):
    _full_disk_after(monkeypatch, 2, failure)  # epoch 1 writes last.pt and best.pt; epoch 2's last.pt fails
    code, _, err = run_cli("train", "digits", *FLAGS, "--set", f"run.runs_dir={tmp_path}", "--run", "r")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert str(tmp_path / "r" / "last.pt") in lines[0] and "space" in lines[0] and "--resume" in lines[0]
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    cfg = resolve_config("digits", overrides={"run.runs_dir": str(tmp_path), "run.name": "r"}, resume=True)
    result = train(cfg, resume=True)
    assert result.best["epochs"] == 2 and [r["epoch"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("code_, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_an_unwritable_runs_folder_fails_before_training(tmp_path, monkeypatch, code_, words, run_cli):
    def refuse(*args, **kwargs):
        raise OSError(code_, os.strerror(code_))

    monkeypatch.setattr(files_module.tempfile, "mkstemp", refuse)
    saved = _full_disk_after(monkeypatch, 0, AssertionError("no checkpoint may be attempted"))
    code, out, err = run_cli("train", "digits", *FLAGS, "--set", f"run.runs_dir={tmp_path}", "--run", "r")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and str(tmp_path / "r") in lines[0], err
    assert saved == [] and "epoch" not in out


def test_a_runs_folder_that_is_a_file_is_one_error_line(tmp_path, run_cli):
    (tmp_path / "runs").write_text("not a folder")
    code, _, err = run_cli("train", "digits", *FLAGS, "--set", f"run.runs_dir={tmp_path / 'runs'}", "--run", "r")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and str(tmp_path / "runs") in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_folder_fails_before_training(tmp_path, run_cli):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        code, _, err = run_cli("train", "digits", *FLAGS, "--set", f"run.runs_dir={runs}", "--run", "r")
    finally:
        runs.chmod(0o755)
    assert code == 2 and err.count("\n") == 1 and "permission denied" in err


def test_metrics_with_a_line_cut_short_still_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n" + '{"epoch": 2, "train_lo')
    assert read_metrics(path) == [{"epoch": 1, "train_loss": 0.5}]


def test_a_metrics_write_on_a_full_disk_is_an_output_error_and_keeps_the_file_whole(tmp_path, monkeypatch):
    from noduleflow.train.runlog import RunLog

    log = RunLog(tmp_path)
    log.log_epoch({"epoch": 1, "train_loss": 0.5})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", full)
    with pytest.raises(OutputError, match="no space left") as err:
        log.log_epoch({"epoch": 2, "train_loss": 0.4})
    assert str(tmp_path / "metrics.jsonl") in err.value.message
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"epoch": 1, "train_loss": 0.5}]
    with pytest.warns(UserWarning, match="curves.png not drawn"):
        assert log.close() is None
