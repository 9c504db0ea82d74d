"""Checkpoints: atomic writes, weights_only reads, clear errors for damaged or incompatible files."""

import errno
import random

import numpy as np
import pytest
import torch

from noduleflow.errors import CheckpointError, OutputError
from noduleflow.models import create_model
from noduleflow.train import checkpoint
from noduleflow.train.checkpoint import (
    init_from_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

SMALL = {"width": 4, "input_size": (16, 16, 16)}  # the book's classifier, narrower and on 16^3 patches


@pytest.fixture
def saved(tmp_path):
    """A classifier checkpoint with every kind of entry the trainer stores (RNG, optimizer, config)."""
    torch.manual_seed(0)
    model = create_model("nodule_classifier", **SMALL)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 16, 16, 16)).sum().backward()
    opt.step()
    path = save_checkpoint(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": [rng_state()],
            "config": {"task": "classify", "data": {"spacing": []}},
            "epoch": 3,
        },
        tmp_path / "best.pt",
    )
    return path, model


def test_loads_with_weights_only(saved):
    path, model = saved
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 3 and payload["format"] == checkpoint.FORMAT
    for key, tensor in model.state_dict().items():
        assert torch.equal(payload["model"][key], tensor)
    assert payload["optimizer"]["state"][0]["step"] == 1


def test_a_crash_while_writing_keeps_the_old_file(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OutputError, match="disk full") as err:
        save_checkpoint({"model": {}}, path)
    assert str(path) in err.value.message and "--resume" in err.value.message
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left behind


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed"
        ),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
    ],
)
def test_a_full_disk_is_one_error_naming_the_file_and_the_old_checkpoint_still_loads(saved, monkeypatch, failure):
    path, model = saved

    def fill(obj, f):
        f.write(b"PK\x03\x04 the start of a zip")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", fill)
    with pytest.raises(OutputError) as err:
        save_checkpoint({"model": {}, "epoch": 4}, path)
    assert str(path) in err.value.message and ("space" in err.value.message or "quota" in err.value.message)
    monkeypatch.undo()
    payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and all(torch.equal(payload["model"][k], v) for k, v in model.state_dict().items())
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def test_a_runtime_error_that_is_not_a_write_failure_is_not_hidden(saved, monkeypatch):
    path, _ = saved

    def bug(obj, f):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(checkpoint.torch, "save", bug)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"model": {}}, path)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def test_truncated_file_is_a_checkpoint_error_naming_it(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in err.value.message and "cannot read checkpoint" in err.value.message


def test_empty_file_is_a_checkpoint_error_naming_it(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(empty)
    assert str(empty) in err.value.message and "cannot read checkpoint" in err.value.message


def test_foreign_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a noduleflow checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_rng_state_round_trip():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_init_loads_the_body_and_freezes_all_but_the_head(saved):
    path, source = saved
    torch.manual_seed(1)
    model = create_model("nodule_classifier", **SMALL)
    head_before = model.head.weight.clone()
    assert init_from_checkpoint(model, path.parent, finetune_depth=1) == path  # a run folder means its best.pt
    assert torch.equal(model.block4[0][0].weight, source.block4[0][0].weight)
    assert torch.equal(model.head.weight, head_before)  # the head starts fresh for the new task
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    init_from_checkpoint(model, path, finetune_depth=2)
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"block4", "head"}


@pytest.mark.parametrize(
    "other", [{"name": "nodule_classifier", "width": 8, "input_size": (16, 16, 16)}, {"name": "digits_cnn"}]
)
def test_init_from_another_architecture_names_the_file(saved, other):
    path, _ = saved
    model = create_model(other.pop("name"), **other)
    with pytest.raises(CheckpointError) as err:
        init_from_checkpoint(model, path, finetune_depth=1)
    assert str(path) in err.value.message and "do not fit" in err.value.message


def test_load_model_state_reports_the_first_mismatch(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match=r"shape block1\.0\.0\.weight"):
        load_model_state(
            create_model("nodule_classifier", width=8, input_size=(16, 16, 16)), load_checkpoint(path)["model"], path
        )
