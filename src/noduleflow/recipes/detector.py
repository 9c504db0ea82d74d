"""`train_detector`: the whole detector (segmentation, nodule classifier, malignancy) into one run folder.

The default recipe is sized for a 2-core laptop CPU and the detection issue's 30 minutes: 27.1 min
on bench/detect.py's 80 full-resolution (512 x 512) synthetic scans (segment 7.8, ONNX and int8
export 0.5, mining 4.3, classify 14.5, malignancy 0.1). Mining grows with the scans up to its voxel
cap (`recipes.mining`: all 160 small scans, 36 full ones); the other parts are sized in samples.
On 30 held-out scans of another seed it reaches CPM 0.87 (46 of 52 nodules found, the six others
get no candidate) at full resolution. The classifier's patches span fixed millimetres (`data.patch_mm`,
see RECIPE); with voxel patches an earlier recipe reached 0.82 there, with mm patches 0.83. On small
(256 x 256) scans the previous recipe (19 mined scans, best-AP epoch) reached 0.77 (40 of 52 found,
25.1 min; all 160 small scans were mined then too).
Each part is an ordinary `noduleflow.train.train` run with its own config.yaml, written to
RUNS_DIR/RUN/<part>/ (the layout `detect.models` reads). All parts use the same seed and so the same split by series.
The U-Net is exported (ONNX, int8) right after it is trained, so that mining runs its int8 version; every
model is exported at the end (`noduleflow.export`), so a freshly trained run detects from its exports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noduleflow.config import resolve_config
from noduleflow.errors import ConfigError

RECIPE: dict[str, dict[str, Any]] = {
    # width 16 rather than the preset's 8: on 30 held-out scans (another seed) it found 30 of 50 nodules
    # with 6.6 components per scan, width 8 27 with 14.4, for 7.2 instead of 4.3 minutes
    "segment": {
        "model.width": 16,
        "run.epochs": 12,
        "data.epoch_samples": 2048,
        "data.batch_size": 32,
        "optim.lr": 2e-3,
        "data.num_workers": 1,
    },
    # ranked by the FROC, so the classifier's best epoch is the one with the best average precision;
    # the mined candidates (the U-Net's own false positives, ~4% of the candidates) weigh 10: about a third of the negatives drawn.
    # Patches span 24 x 24 x 24 mm (1.5 mm slices, 0.75 mm pixels): slice spacing varies 4x between scans (0.6-2.5 mm)
    # and voxel patches showed a nodule 4x taller on thin slices. Same U-Net and candidates, 80 full-resolution scans:
    # CPM 0.827 / 0.774 on the held-out / development scans, against 0.819 / 0.737 for 16 x 32 x 32 voxel patches
    # (9 epochs), and 0.714 (development) for 32 x 40 x 40 mm, whose 2 mm slices blur 3-5 mm nodules.
    # 8 epochs (about 15 min; resampling costs about 1 ms a patch). Validated once, after the last epoch, which
    # is the one kept: the cosine schedule ends there, and choosing an earlier epoch by the validation AP
    # (about 34 nodules) picked an undertrained epoch 3 in one run (CPM 0.80 / 0.71 instead of 0.87 / 0.77 with
    # its last epoch); each validation also costs ~20 s (3,500 patches).
    "classify": {
        "run.epochs": 8,
        "data.epoch_samples": 6144,
        "data.batch_size": 32,
        "optim.lr": 1e-3,
        "data.balance": 1,
        "run.monitor": "val_ap",
        "run.val_every": 0,
        "data.extra_weight": 10,
        "data.patch_mm": [24, 24, 24],
    },
    # fine-tuned from the classifier (model.init), whose architecture and data.patch_mm it takes
    "malignancy": {"run.epochs": 4, "data.batch_size": 16, "optim.lr": 1e-3, "model.finetune_depth": 2},
}
"""Per-part overrides over the task presets (config.PRESETS); `scale` multiplies epochs and epoch_samples."""
TRAINING_JSON = "training.json"  # seconds per part, written last: a run folder with it is complete
EXPORT_FORMATS = (
    "onnx",
    "int8",
)  # what `detect` runs by default; .pt2 on demand (`noduleflow export RUN --format pt2`)
MINED_CSV = "mined_candidates.csv"  # the segmentation's candidates on the training data, added to the classifier's
_COMMON = {"data.val_fraction": 0.1, "data.test_fraction": 0.0}


@dataclass(frozen=True)
class DetectorTraining:
    """Where the detector went, how long each part took (s), and parts skipped (with why)."""

    run_dir: Path
    seconds: dict[str, float]
    skipped: dict[str, str]

    def describe(self) -> str:
        parts = ", ".join(f"{part} {s / 60:.1f} min" for part, s in self.seconds.items())
        total = sum(self.seconds.values())
        lines = [f"detector {self.run_dir}: trained in {total / 60:.1f} min ({parts})"]
        lines += [f"skipped {part}: {why}" for part, why in self.skipped.items()]
        return "\n".join(lines)


def train_detector(
    data: str | Path,
    *,
    run: str = "detector",
    runs_dir: str | Path = "runs",
    seed: int = 0,
    scale: float = 1.0,
    malignancy: bool = True,
    mine: bool = True,
    progress: bool = True,
    threads: int = 0,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> DetectorTraining:
    """Prepare `data`'s cache, then train segment, classify and (if `malignancy` and labels exist) malignancy.

    scale: multiplies epoch_samples (training length) for quick tests (e.g. 0.02) or longer recipes.
    mine: between segment and classify, add the trained segmentation's own candidates on `data` to the
        classifier's (`recipes.mining`): it then learns the false positives it will be shown in `detect`.
    overrides: per part, extra dotted config keys, e.g. {"segment": {"run.epochs": 2}}.
    """
    from noduleflow.data.luna16 import load_index
    from noduleflow.data.prepare_cache import prepare
    from noduleflow.export import export_run
    from noduleflow.recipes.mining import mine_candidates
    from noduleflow.train import train

    if scale <= 0:
        raise ConfigError(
            f"scale = {scale} is not positive", fix="Use 1.0 for the default recipe, less for a quick test."
        )
    run_dir = Path(runs_dir) / run
    prepare(data, progress=progress)
    index = load_index(data)
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    parts = ["segment", "classify"]
    if not malignancy:
        skipped["malignancy"] = "not asked for"
    elif not any(n.malignant for n in index.nodules) or all(
        n.malignant for n in index.nodules if n.malignant is not None
    ):
        skipped["malignancy"] = (
            "the data has no malignant/benign labels of both kinds (annotations_with_malignancy.csv)"
        )
    else:
        parts.append("malignancy")
    for part in parts:
        flags = {
            **_COMMON,
            **RECIPE[part],
            **(overrides or {}).get(part, {}),
            "data.root": str(data),
            "run.name": part,
            "run.runs_dir": str(run_dir),
            "run.seed": seed,
            "run.progress": progress,
            "run.threads": threads,
        }
        if part == "classify" and mine:
            start = time.perf_counter()
            mined = mine_candidates(data, run_dir / "segment", run_dir / MINED_CSV, progress=progress)
            seconds["mine"] = time.perf_counter() - start
            flags["data.extra_candidates"] = [str(run_dir / MINED_CSV)]
            if progress:
                print(
                    f"mined {mined['candidates']} segmentation candidates on {mined['scans']} of {mined['of']} scans "
                    f"({mined['positives']} on nodules) -> {run_dir / MINED_CSV}"
                )
        if "data.epoch_samples" in flags:
            flags["data.epoch_samples"] = max(int(flags["data.epoch_samples"] * scale), flags["data.batch_size"])
        if part == "malignancy":
            flags["model.init"] = str(run_dir / "classify")
        start = time.perf_counter()
        train(resolve_config(part, overrides=flags))
        seconds[part] = time.perf_counter() - start
        if part == "segment":  # exported first, so that mining already runs the int8 U-Net
            start = time.perf_counter()
            export_run(run_dir, formats=EXPORT_FORMATS, data=data, parts=("segment",))
            seconds["export"] = time.perf_counter() - start
    start = time.perf_counter()
    export_run(run_dir, formats=EXPORT_FORMATS, data=data)  # the classifiers; the U-Net's exports are kept
    seconds["export"] = seconds.get("export", 0.0) + time.perf_counter() - start
    result = DetectorTraining(run_dir, seconds, skipped)
    (run_dir / TRAINING_JSON).write_text(
        json.dumps({"seconds": seconds, "skipped": skipped, "scale": scale, "seed": seed, "data": str(data)}, indent=1)
        + "\n"
    )
    return result
