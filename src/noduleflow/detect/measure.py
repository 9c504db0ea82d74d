"""Malignancy from what a ruler and a densitometer read off the scan: a nodule's size, its density and calcium.

`nodule_measures` reads three numbers off a 24 mm HU patch around a nodule's centre:
- log diameter: 64 rays from the centre, each ending where the smoothed HU falls below halfway between the
  centre's density and lung parenchyma's (-850 HU); twice the lower quartile of their lengths, so a nodule against
  the pleura or a vessel is measured along its free rays (rank correlation 0.91-0.97 with the annotated diameter
  on the development scans, against 0.45 for the voxel count of its thresholded blob);
- centre density (HU / 1000): ground glass reads about -0.5, solid tissue about 0;
- calcified (0 or 1): the patch's HU passes 250 within 1.1 mm of the centre.

`MeasuredMalignancy` is a logistic regression over them, fitted by `fit_measured` on every labelled nodule of the
training scans (`recipes.detector` writes it to RUN/malignancy/measured.json; `noduleflow export` copies it into
the manifest). A logistic model of three measured numbers needs fewer examples than a network learns size and
density from: a detector's training set holds about a hundred labelled nodules, and on the development scans the
measured model ranked malignancy better than the fine-tuned network and as well as the annotated diameter
(docs/decisions.md). The Predictor uses it for P(malignant) where the run has one (`malignancy_model`).

numpy and scipy only: the ONNX runtimes use it without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

MEASURED_NAME = "measured.json"
"""The fitted model's file in a run's malignancy/ folder (the manifest holds it under `export.manifest.MEASURED_KEY`)."""
FEATURES = ("log_diameter", "centre_density", "calcified")
PATCH_MM = (24.0, 24.0, 24.0)
PATCH_SIZE = (16, 32, 32)
"""The patch the measures are read from: 24 mm a side, 1.5 mm slices and 0.75 mm pixels (the classifier's)."""
LUNG_HU = -850.0
CALCIUM_HU = 250.0
MIN_NODULES = 10
"""`fit_measured` needs at least this many labelled nodules, and both labels among them."""

_STEP_MM = 0.375
_RAY_MM = np.arange(0.0, 12.0 + _STEP_MM / 2, _STEP_MM)  # (S,) sample distances along a ray
_CENTRE_STEPS = 3  # the centre's density: the mean of every ray's first samples (within 0.75 mm)
_CALCIUM_STEPS = 4  # calcium is looked for within 1.1 mm of the centre
_HU_RANGE = (-2048.0, 4096.0)  # beyond any CT scanner's numbers


def _directions(n: int = 64) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice), axes I, R, C."""
    k = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * k / n), np.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(polar), np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth)], axis=1)


_RAYS = _directions()


def patch_spacing() -> tuple[float, float, float]:
    """mm per voxel of the measured patch, axes I, R, C."""
    return tuple(float(mm / n) for mm, n in zip(PATCH_MM, PATCH_SIZE, strict=True))


def crop_measured(volume, centers_irc: np.ndarray) -> np.ndarray:
    """(N, *PATCH_SIZE) float32 HU patches of `volume` (a `CtVolume`) around (N, 3) voxel centres, for `nodule_measures`."""
    from noduleflow.data.patches import crop_patch

    centers = np.asarray(centers_irc, np.float64).reshape(-1, 3)
    if not len(centers):
        return np.zeros((0, *PATCH_SIZE), np.float32)
    return np.stack([crop_patch(volume.hu, c, PATCH_SIZE, PATCH_MM, volume.spacing_irc) for c in centers]).astype(
        np.float32, copy=False
    )


def nodule_measures(patches_hu: np.ndarray, spacing_irc: Sequence[float] | None = None) -> np.ndarray:
    """(N, 3) float64 `FEATURES` of (N, D, H, W) HU patches centred on nodules (module docstring).

    spacing_irc: mm per voxel of the patches (default: `patch_spacing()`, the patch `crop_measured` cuts).
    The rays reach 12 mm: a nodule wider than 24 mm reads as 24 mm.
    """
    patches = np.asarray(patches_hu, np.float32)
    if patches.ndim != 4:
        raise ValueError(f"patches must be (N, D, H, W), got shape {patches.shape}")
    patches = np.clip(patches, *_HU_RANGE)  # an uploaded patch of absurd numbers still gives finite measures
    spacing = np.asarray(patch_spacing() if spacing_irc is None else spacing_irc, np.float64)
    centre = (np.array(patches.shape[1:]) - 1) / 2
    points = centre + _RAYS[:, None, :] * _RAY_MM[None, :, None] / spacing  # (R, S, 3) voxel coordinates
    sigma = 0.75 / spacing  # a 0.75 mm Gaussian: the rays follow the nodule, not the noise
    smooth = ndimage.gaussian_filter(patches, (0.0, *sigma))  # the batch at once: no smoothing across patches
    n, (rays, steps) = len(patches), points.shape[:2]
    batch = np.repeat(np.arange(n, dtype=np.float64), rays * steps)
    coords = np.vstack([batch, np.tile(points.reshape(-1, 3).T, n)])
    profile = ndimage.map_coordinates(smooth, coords, order=1, mode="nearest").reshape(n, rays, steps)
    density = profile[:, :, :_CENTRE_STEPS].mean(axis=(1, 2))  # (N,)
    below = profile < ((density + LUNG_HU) / 2)[:, None, None]
    below[:, :, -1] = True  # a ray that never leaves the nodule ends at the patch's edge
    lengths = _RAY_MM[np.argmax(below, axis=2)]  # (N, rays)
    diameter = 2.0 * np.percentile(lengths, 25, axis=1)
    near = points[:, :_CALCIUM_STEPS].reshape(-1, 3).T
    calcium = ndimage.map_coordinates(
        patches, np.vstack([np.repeat(np.arange(n, dtype=np.float64), near.shape[1]), np.tile(near, n)]), order=1
    ).reshape(n, -1)
    return np.stack([np.log1p(diameter), density / 1000.0, (calcium.max(axis=1) > CALCIUM_HU).astype(np.float64)], 1)


def measured_diameter_mm(measures: np.ndarray) -> np.ndarray:
    """(N,) diameters in mm from (N, 3) `nodule_measures`."""
    return np.expm1(np.asarray(measures)[:, 0])


@dataclass(frozen=True)
class MeasuredMalignancy:
    """P(malignant) = logistic(intercept + coef . (measures - mean) / scale) over `FEATURES`.

    nodules, malignant: how many labelled nodules (and malignant ones among them) it was fitted on.
    diameter_factor: a nodule's diameter is this times its measured one (`measured_diameter_mm`): the median ratio
    of the annotated to the measured diameter over the nodules it was fitted on (the rays' lower quartile reads
    a little short of an annotation's equivalent diameter).
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    nodules: int
    malignant: int
    diameter_factor: float = 1.0
    features: tuple[str, ...] = FEATURES

    def logits(self, measures: np.ndarray) -> np.ndarray:
        """(N,) log-odds of malignancy for (N, 3) `nodule_measures`."""
        z = (np.asarray(measures, np.float64) - np.array(self.mean)) / np.array(self.scale)
        return z @ np.array(self.coef) + self.intercept

    def probabilities(self, measures: np.ndarray) -> np.ndarray:
        """(N,) float32 P(malignant) for (N, 3) `nodule_measures`."""
        return (1.0 / (1.0 + np.exp(-self.logits(measures)))).astype(np.float32)

    def diameters_mm(self, measures: np.ndarray) -> np.ndarray:
        """(N,) diameters in mm for (N, 3) `nodule_measures`, calibrated by `diameter_factor`."""
        return self.diameter_factor * measured_diameter_mm(measures)

    def __call__(self, patches_hu: np.ndarray, spacing_irc: Sequence[float] | None = None) -> np.ndarray:
        """(N,) float32 P(malignant) of (N, D, H, W) HU patches (`nodule_measures`'s arguments)."""
        if len(patches_hu) == 0:
            return np.zeros(0, np.float32)
        return self.probabilities(nodule_measures(patches_hu, spacing_irc))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> MeasuredMalignancy:
        """The model of `to_dict`'s output; anything else (another feature list, a wrong length, a non-finite
        number) raises ValueError."""
        if not isinstance(data, Mapping) or tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"not a measured malignancy model over {', '.join(FEATURES)}")
        vectors = {k: tuple(float(x) for x in data.get(k, ())) for k in ("mean", "scale", "coef")}
        intercept = float(data.get("intercept", math.nan))
        numbers = [*vectors["mean"], *vectors["scale"], *vectors["coef"], intercept]
        if any(len(v) != len(FEATURES) for v in vectors.values()) or not all(map(math.isfinite, numbers)):
            raise ValueError("a measured malignancy model needs finite mean, scale and coef of one value per feature")
        if min(vectors["scale"]) <= 0:
            raise ValueError("a measured malignancy model's scale must be positive")
        factor = float(data.get("diameter_factor", math.nan))
        if not 0.25 <= factor <= 4.0:  # NaN fails too
            raise ValueError(f"a measured malignancy model's diameter_factor must lie in 0.25..4, got {factor}")
        counts = {"nodules": int(data["nodules"]), "malignant": int(data["malignant"])}
        return cls(**vectors, intercept=intercept, **counts, diameter_factor=factor)


def read_measured(path: str | Path, *, fix: str) -> MeasuredMalignancy | None:
    """The model in `path` (a run's malignancy/measured.json), None when there is no such file; a damaged one
    raises `CheckpointError` naming it and `fix`."""
    from noduleflow.errors import CheckpointError

    path = Path(path)
    if not path.exists():
        return None
    try:
        if not path.is_file() or path.stat().st_size > 1 << 16:  # a few hundred bytes when written by the recipe
            raise ValueError("not a small regular file")
        return MeasuredMalignancy.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read the measured malignancy model ({err})", path=path, fix=fix) from None


def fit_measured(
    measures: np.ndarray, malignant: Sequence[bool], *, diameters_mm: Sequence[float] | None = None, c: float = 1.0
) -> MeasuredMalignancy:
    """A `MeasuredMalignancy` fitted to (N, 3) `nodule_measures` and their labels (L2-regularised logistic
    regression on standardised measures, strength 1 / c), and with their annotated `diameters_mm` (NaN: unknown),
    the diameter calibration. Fewer than `MIN_NODULES` or one label only raises ValueError."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(measures, np.float64), np.asarray(malignant, bool)
    if len(y) < MIN_NODULES or y.all() or not y.any():
        raise ValueError(
            f"fitting malignancy needs at least {MIN_NODULES} labelled nodules of both kinds, got {len(y)} "
            f"({int(y.sum())} malignant)"
        )
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)  # a measure that never varies (no calcified nodule) weighs nothing
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
    factor = 1.0
    if diameters_mm is not None:
        annotated, measured = np.asarray(diameters_mm, np.float64), measured_diameter_mm(x)
        known = np.isfinite(annotated) & (annotated > 0) & (measured > 0)
        if known.any():
            factor = float(np.clip(np.median(annotated[known] / measured[known]), 0.25, 4.0))
    return MeasuredMalignancy(
        tuple(map(float, mean)),
        tuple(map(float, scale)),
        tuple(map(float, model.coef_[0])),
        float(model.intercept_[0]),
        int(len(y)),
        int(y.sum()),
        factor,
    )
