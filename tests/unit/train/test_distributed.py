"""DDP on 2 CPU processes (gloo) ends with the weights of one process training on the same global batch.

The ranks are started the way torchrun starts them: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in the environment, read by `init_distributed`. The model has no batch norm, whose
per-rank batch statistics would (rightly) differ from one big batch's.
"""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from noduleflow.config import config_from_dict
from noduleflow.train.distributed import DistInfo, ShardSampler, close_distributed, init_distributed
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import wrap_model

SAMPLES, GLOBAL_BATCH, EPOCHS = 64, 16, 2
START_METHOD = "spawn" if torch.cuda.is_available() else "fork"


def _fit(dist: DistInfo, batch: int, accumulate: int, run_dir: Path | None):
    """Train a small conv net on fixed random 8x8 images; returns (state_dict, history)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(SAMPLES, 1, 8, 8, generator=gen), torch.randint(0, 3, (SAMPLES,), generator=gen))
    sampler = DistributedSampler(data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=0)
    train_loader = DataLoader(data, batch_size=batch, sampler=sampler)
    val_loader = DataLoader(data, batch_size=16, sampler=ShardSampler(SAMPLES, dist.rank, dist.world_size))
    wrapped = wrap_model(model, device=torch.device("cpu"), amp="off", dist=dist)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = config_from_dict({"run": {"epochs": EPOCHS, "progress": False}, "optim": {"accumulate": accumulate}})
    trainer = Trainer(
        wrapped, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, config=cfg, run_dir=run_dir, dist=dist
    )
    trainer.fit()
    return {k: v.clone() for k, v in wrapped.module.state_dict().items()}, trainer.history


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    dist = init_distributed(torch.device("cpu"))
    assert (dist.rank, dist.world_size) == (rank, world)
    state, history = _fit(dist, GLOBAL_BATCH // world, 1, Path(out) / "run")
    torch.save({"state": state, "history": history}, Path(out) / f"rank{rank}.pt")
    close_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference run (which also imports everything the ranks need), then the 2-rank run."""
    out = tmp_path_factory.mktemp("ddp")
    single = _fit(DistInfo(), GLOBAL_BATCH, 1, out / "single")
    # fork: the ranks inherit the imported modules instead of importing torch again (seconds on 2 cores). Not
    # where CUDA is: there autograd runs backward on its own threads, which a forked child cannot use
    mp.start_processes(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method=START_METHOD)
    return out, single


def test_ddp_equals_one_process_with_the_same_global_batch(runs):
    out, (single, single_history) = runs
    for rank in (0, 1):
        ddp = torch.load(out / f"rank{rank}.pt", weights_only=True)
        for key, tensor in single.items():
            torch.testing.assert_close(ddp["state"][key], tensor, rtol=0, atol=1e-5)
        for mine, theirs in zip(ddp["history"], single_history):  # validation gathered from both shards
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
            assert mine["val_accuracy"] == pytest.approx(theirs["val_accuracy"])
    assert single_history[-1]["step"] == EPOCHS * SAMPLES // GLOBAL_BATCH
    assert single_history[-1]["train_loss"] < single_history[0]["train_loss"]  # it trained, so equality means something


def test_only_rank_zero_writes(runs):
    out, _ = runs
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert sorted(p.name for p in (out / "run").glob("*.pt")) == ["best.pt", "last.pt"]
    assert len(torch.load(out / "run" / "last.pt", weights_only=True)["rng"]) == 2  # one RNG state per rank


def test_gradient_accumulation_equals_the_big_batch(runs):
    _, (big, _) = runs
    accumulated, _ = _fit(DistInfo(), GLOBAL_BATCH // 2, 2, None)
    for key, tensor in big.items():
        torch.testing.assert_close(accumulated[key], tensor, rtol=0, atol=1e-5)
