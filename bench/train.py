"""Training throughput of the nodule classifier: noduleflow's path against the book's loop, same run.

    python bench/train.py [--batch-size 32] [--steps 4] [--threads 0] [--device cuda] [--amp off]

Both sides train the same architecture (the book's `nodule_classifier`, 1x32x48x48 patches,
batch 32) on the same patches, cut from one synthetic int16 CT volume:
  baseline    "Deep Learning with PyTorch" style: a Dataset whose __getitem__ crops one patch from
              the numpy volume, clips and scales it; a DataLoader collates batches; NCDHW fp32
              eager model; SGD with momentum 0.99; the process's default allocator.
  noduleflow  the training path: the volume stored as a scan-cache entry (`ScanCache.write`), its
              patches read by `CandidatePatches` and `make_loader` (a batch cut at once, shuffled by
              seed, in this process as the recipe's data.num_workers 0 does); `wrap_model`
              (channels_last_3d on CPU), `configure_host` (glibc keeps freed blocks), AdamW, `Trainer`'s step.
--augment adds the classify task's augmentation to both sides: the baseline augments each sample in
__getitem__ with a 3D affine_grid / grid_sample (the book's getCtAugmentedCandidate), noduleflow each
batch after collation, on the training device. Off by default: the ratio compares the same work as
before, and bench/loader.py measures the augmented data path on its own.
The baseline runs first, before `configure_host` changes the allocator for the rest of the process.
Achieved FLOP/s = FlopCounterMode's forward+backward FLOPs per sample x samples/s; MFU divides it by
this machine's fp32 peak, measured as the best of a few 2048x2048 torch.mm.
A third figure, for information, is the Trainer path with the classify preset's model (nodule_net on
the centre 16x32x32 of the same patches): a different model, so it is not the ratio line.
The last two lines are `mfu X` and `ratio_vs_baseline Y`.

--device cuda runs both sides on the GPU (the baseline moves each collated batch there, as the book
does); noduleflow's side then uses `run.amp` (--amp, default auto: bf16 autocast on a GPU that has it),
and the peak is the best torch.mm in the dtype that side computes in. On a GPU, use more steps and a
larger batch (e.g. --steps 30 --batch-size 256): a few small batches time the launch overhead.

One thread by default, for both sides: on the shared 2-core machine this was written on, two
OpenMP threads stall whenever another process holds a core (measured: ~1 sample/s on either side
instead of 7-16), which turns the ratio into noise. Pass --threads 2 (or 0) on an idle machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from noduleflow.config import resolve_config
from noduleflow.models import create_model, input_size_of
from noduleflow.train.host import configure_host
from noduleflow.train.run import build_optimizer
from noduleflow.train.trainer import Trainer
from noduleflow.train.wrap import resolve_amp, wrap_model

PATCH = (32, 48, 48)  # (D, H, W) voxels along (I, R, C)


def _volume_and_centres(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An int16 HU volume (I, R, C), n patch centres inside it and their 0/1 labels."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1000, 1500, size=(96, 160, 160), dtype=np.int16)
    half = np.array(PATCH) // 2
    centres = rng.integers(half, np.array(volume.shape) - half, size=(n, 3))
    return volume, centres, rng.integers(0, 2, size=n)


def _crop(volume: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The book's getRawCandidate in short: cut, clip HU to [-1000, 1000], scale to [-1, 1] float32."""
    lo = centre - np.array(PATCH) // 2
    chunk = volume[lo[0] : lo[0] + PATCH[0], lo[1] : lo[1] + PATCH[1], lo[2] : lo[2] + PATCH[2]]
    return np.clip(chunk, -1000, 1000).astype(np.float32) / 1000.0


class _BookPatches(Dataset):
    """One (1, D, H, W) patch per __getitem__, built from the numpy volume (collated by the DataLoader)."""

    def __init__(self, volume: np.ndarray, centres: np.ndarray, labels: np.ndarray, augment=None):
        self.volume, self.centres, self.labels, self.augment = volume, centres, labels, augment

    def __len__(self) -> int:
        return len(self.centres)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = torch.from_numpy(_crop(self.volume, self.centres[i])).unsqueeze(0)  # (1, D, H, W)
        if self.augment is not None:  # the book's getCtAugmentedCandidate: one sample, one 3D grid_sample
            from noduleflow.data.augment import _resample

            theta = self.augment._theta(patch.shape[1:], torch.rand(1, 3) < 0.5, None)
            patch = _resample(patch[None], theta, self.augment.pad, "bilinear")[0]
            patch = patch + torch.randn(patch.shape) * (self.augment.noise_hu / 1000.0)
        return patch, torch.tensor(self.labels[i])


def _scan_cache(folder: str, volume: np.ndarray, centres: np.ndarray, labels: np.ndarray):
    """The volume as a scan-cache entry (1 mm voxels) and its candidates: (ScanCache, [Candidate])."""
    from noduleflow.ct.volume import CtVolume
    from noduleflow.data import Candidate, ScanCache

    cache = ScanCache(folder)
    scan = CtVolume(volume, np.zeros(3), np.ones(3), np.eye(3), "bench-volume")
    cache.write(scan, np.zeros(volume.shape, dtype=bool), key="bench")
    xyz = cache.open(scan.series_uid).irc_to_xyz(centres)  # (N, 3) world mm of each patch centre
    return cache, [Candidate(scan.series_uid, tuple(p), bool(y)) for p, y in zip(xyz.tolist(), labels)]


def _matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """Best torch.mm rate in FLOP/s (2 n^3 FLOPs per product) on `device` in `dtype`; n = 8192 on a GPU, 2048 on a CPU."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _flops_per_sample(batch: int) -> float:
    """Forward + backward FLOPs of one training sample (the counter sees every conv/matmul of the step)."""
    model = create_model("nodule_classifier")
    x, y = torch.randn(batch, 1, *PATCH), torch.randint(0, 2, (batch,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def _baseline(volume, centres, labels, batch: int, steps: int, device: torch.device, augment=None) -> float:
    """Samples/s of the book-style loop over `steps` batches after one warm-up batch."""
    torch.manual_seed(0)
    model = create_model("nodule_classifier").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    data = _BookPatches(volume, centres, labels, augment)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=0)
    start = None
    for i, (x, y) in enumerate(loader):
        if i == 1:
            _sync(device)
            start = time.perf_counter()
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == steps:
            break
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


BOOK_MODEL = {"model.name": "nodule_classifier", "model.width": 8, "model.depth": 4}


def _noduleflow(
    cache,
    candidates: list,
    batch: int,
    steps: int,
    model: dict | None = None,
    *,
    device: torch.device = torch.device("cpu"),
    amp: str = "auto",
    augment=None,
) -> float:
    """Samples/s that `Trainer` itself reports for its second epoch of `steps` batches (the first warms up).

    The batches come from the scan cache through `CandidatePatches` and `make_loader`, as a training run's.
    model: config overrides of the architecture (default: the book's, as the baseline); None takes the
    classify preset (nodule_net), whose patches are the centre 16 x 32 x 32 voxels of the same centres.
    """
    from noduleflow.data import CandidatePatches, make_loader

    torch.manual_seed(0)
    cfg = resolve_config(
        "classify",
        overrides={
            "data.root": "in-memory",
            "data.batch_size": batch,
            "run.epochs": 2,
            "run.progress": False,
            "run.threads": 0,
            "run.amp": amp,
            **(model or {}),
        },
    )
    configure_host(device, cfg.run.threads)
    net = create_model(cfg.model.name, width=cfg.model.width, depth=cfg.model.depth)
    size = input_size_of(net)
    train = CandidatePatches(cache, candidates[: steps * batch], size=size, transform=augment)
    val = CandidatePatches(cache, candidates[:batch], size=size)
    train_loader = make_loader(train, batch, shuffle=True, seed=0, drop_last=True, persistent_workers=False)
    val_loader = make_loader(val, batch, persistent_workers=False)
    wrapped = wrap_model(
        net, device=device, channels_last=cfg.run.channels_last, compile=cfg.run.compile, amp=cfg.run.amp
    )
    trainer = Trainer(
        wrapped,
        torch.nn.CrossEntropyLoss(),
        build_optimizer(cfg.optim, wrapped.module),
        train_loader,
        val_loader,
        config=cfg,
    )
    trainer.fit()
    return trainer.history[-1]["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed batches per side")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both sides (default 1, see the module docstring; 0: PyTorch's default)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both sides train")
    parser.add_argument(
        "--augment", action="store_true", help="both sides augment as the classify task does (see the docstring)"
    )
    parser.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="noduleflow side's run.amp (the baseline is always fp32)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, steps, device = args.batch_size, args.steps, torch.device(args.device)
    volume, centres, labels = _volume_and_centres((steps + 1) * batch)
    augment = None
    if args.augment:
        from noduleflow.data import Augment
        from noduleflow.train.tasks import _CT_AUGMENT

        augment = Augment(spatial_dims=3, **_CT_AUGMENT)

    dtype = resolve_amp(args.amp, device) or torch.float32
    peak = _matmul_peak(device, dtype)
    flops = _flops_per_sample(2)
    base = _baseline(volume, centres, labels, batch, steps, device, augment)
    with tempfile.TemporaryDirectory(prefix="noduleflow-bench-train-") as folder:
        cache, candidates = _scan_cache(folder, volume, centres, labels)
        run = dict(device=device, amp=args.amp, augment=augment)
        ours = _noduleflow(cache, candidates, batch, steps, BOOK_MODEL, **run)
        default = _noduleflow(cache, candidates, batch, steps, None, **run)

    name, precision = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        str(dtype).removeprefix("torch."),
    )
    print(
        f"{name}, threads {torch.get_num_threads()}, batch {batch}, {steps} timed steps per side, torch {torch.__version__}, "
        f"noduleflow side in {precision}, augmentation {'on' if augment else 'off'}"
    )
    print(f"matmul peak ({precision:8s})  {peak / 1e9:8.1f} GFLOP/s")
    print(f"model forward+backward      {flops / 1e9:8.2f} GFLOP/sample")
    print(f"baseline (book loop)        {base:8.2f} samples/s  {base * flops / 1e9:6.1f} GFLOP/s")
    print(f"noduleflow (Trainer path)   {ours:8.2f} samples/s  {ours * flops / 1e9:6.1f} GFLOP/s")
    print(
        f"noduleflow's default classifier (nodule_net, 16x32x32 patches, another model): {default:.2f} samples/s, "
        f"{default / base:.1f}x the baseline"
    )
    print(f"mfu {ours * flops / peak:.3f}")
    print(f"ratio_vs_baseline {ours / base:.2f}")


if __name__ == "__main__":
    main()
