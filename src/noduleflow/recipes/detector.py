"""`train_detector`: the whole detector (segmentation, nodule classifier, malignancy) into one run folder.

The recipe is a YAML file, `detector.yaml` beside this module (the repository's configs/detector.yaml):
one sub-tree per part, each a config of `noduleflow train <part>`, plus `common` for all parts. It is
sized for a 2-core laptop CPU and the detection issue's half hour on bench/detect.py's synthetic
scans; its comments keep each decision and docs/decisions.md the measurements behind them. Mining
grows with the scans up to its voxel cap (`recipes.mining`); the other parts are sized in samples.
Each part is an ordinary `noduleflow.train.train` run with its own config.yaml, written to
RUNS_DIR/RUN/<part>/ (the layout `detect.models` reads). All parts use the same seed and so the same split by series.
The U-Net is exported (ONNX, int8) right after it is trained, so that mining runs its int8 version; every
model is exported at the end (`noduleflow.export`), so a freshly trained run detects from its exports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from noduleflow.config import deep_merge, resolve_config
from noduleflow.errors import ConfigError

PARTS = ("segment", "classify", "malignancy")
"""The parts a recipe may name, in training order (malignancy is fine-tuned from classify)."""
TRAINING_JSON = "training.json"  # seconds per part, written last: a run folder with it is complete
EXPORT_FORMATS = (
    "onnx",
    "int8",
)  # what `detect` runs by default; .pt2 on demand (`noduleflow export RUN --format pt2`)
MINED_CSV = "mined_candidates.csv"  # the segmentation's candidates on the training data, added to the classifier's


def load_recipe(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Per part, the nested config a recipe YAML gives it (`common` merged under the part's own sub-tree).

    path: a recipe file; None reads the default, detector.yaml shipped inside this package.
    Keys are checked when each part's config is resolved; here only the recipe's own shape.
    """
    if path is None:
        source, text = "detector.yaml", resources.files(__package__).joinpath("detector.yaml").read_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(
                "recipe not found", path=path, fix="Pass an existing YAML file such as configs/detector.yaml."
            ) from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"not valid YAML ({str(err).splitlines()[0]})", path=source, fix="Fix the YAML syntax."
        ) from None
    known = ("common", *PARTS)
    if not isinstance(tree, dict) or any(key not in known or not isinstance(tree[key], dict) for key in tree):
        raise ConfigError(
            "a detector recipe holds a section of config keys under each of its parts",
            path=source,
            fix=f"Use only the top-level keys {', '.join(known)}, as configs/detector.yaml does.",
        )
    return {part: deep_merge(deep_merge({}, tree.get("common", {})), tree.get(part, {})) for part in PARTS}


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
    recipe: str | Path | None = None,
) -> DetectorTraining:
    """Prepare `data`'s cache, then train segment, classify and (if `malignancy` and labels exist) malignancy, then
    fit the measured malignancy model (`recipes.measured`; skipped, and said so, with too few labelled nodules).

    scale: multiplies epoch_samples (training length) for quick tests (e.g. 0.02) or longer recipes.
    mine: between segment and classify, add the trained segmentation's own candidates on `data` to the
        classifier's (`recipes.mining`): it then learns the false positives it will be shown in `detect`.
    overrides: per part, extra dotted config keys over the recipe's, e.g. {"segment": {"run.epochs": 2}}.
    recipe: a recipe YAML (`load_recipe`); None: the default detector.yaml.
    """
    from noduleflow.data.luna16 import load_index
    from noduleflow.data.prepare_cache import prepare
    from noduleflow.detect.measure import MEASURED_NAME
    from noduleflow.export import export_run
    from noduleflow.recipes.measured import fit_run_measured
    from noduleflow.recipes.mining import mine_candidates
    from noduleflow.train import train

    if scale <= 0:
        raise ConfigError(
            f"scale = {scale} is not positive", fix="Use 1.0 for the default recipe, less for a quick test."
        )
    recipes = load_recipe(recipe)
    source = str(recipe or "detector.yaml")
    for part in PARTS:  # a typo in a later part fails now, not after the parts before it have trained
        flags = {**(overrides or {}).get(part, {}), "data.root": str(data)}
        resolve_config(part, recipe=recipes[part], overrides=flags, source=f"{source} ({part})")
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
            flags["classify.extra_candidates"] = [str(run_dir / MINED_CSV)]
            if progress:
                print(
                    f"mined {mined['candidates']} segmentation candidates on {mined['scans']} of {mined['of']} scans "
                    f"({mined['positives']} on nodules) -> {run_dir / MINED_CSV}"
                )
        if part == "malignancy":
            flags["model.init"] = str(run_dir / "classify")
        cfg = resolve_config(part, recipe=recipes[part], overrides=flags, source=f"{source} ({part})")
        samples = getattr(cfg, part).epoch_samples
        if samples:  # 0 (the whole training set) stays 0
            flags[f"{part}.epoch_samples"] = max(int(samples * scale), cfg.data.batch_size)
            cfg = resolve_config(part, recipe=recipes[part], overrides=flags, source=f"{source} ({part})")
        start = time.perf_counter()
        train(cfg)
        seconds[part] = time.perf_counter() - start
        if part == "malignancy":  # the measured model beside the network (`detect.measure`), on the same scans
            start = time.perf_counter()
            split = index.split(
                val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.run.seed
            )
            try:
                fitted = fit_run_measured(data, run_dir, exclude=split.test)
            except ValueError as err:  # too few labelled nodules: detect uses the network's P(malignant)
                (run_dir / "malignancy" / MEASURED_NAME).unlink(missing_ok=True)
                skipped["measured"] = str(err)
                fitted = None
            seconds["measured"] = time.perf_counter() - start
            if progress and fitted:
                print(
                    f"measured malignancy fitted on {fitted['nodules']} labelled nodules ({fitted['malignant']} "
                    f"malignant) -> {run_dir / 'malignancy' / MEASURED_NAME}"
                )
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
