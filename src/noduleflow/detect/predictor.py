"""`Predictor`: one scan in, nodule findings out; what `noduleflow detect` and the server both call.

Steps (shapes for one scan of I x R x C voxels):
1. lung field: `ct.lung_mask` on every second row and column (3.5x faster, its edge off by a voxel)
   -> (I, R, C) bool; no lung (or a scan of only air) -> no findings and a warning;
2. segmentation: the 2D U-Net (under ONNX Runtime: `detect.runtime`) over lung-holding slices and
   boxes (`detect.windows`) -> (I, R, C) probabilities;
3. grouping: threshold + 3D connected components (`detect.components`); components with no lung
   voxel within `lung_margin` voxels of their centre are dropped (a nodule on the pleura or a dense
   one the lung mask left out stays), the rest ranked by peak probability (at most `max_candidates`);
4. classification: (N, 1, D, H, W) patches (the classifier's `input_size`) around the centres, in batches -> P(nodule),
   by default the mean over each patch and its mirror image (flipped along all three axes, as training's
   augmentation flips): on the bench's 30 held-out full-resolution scans, CPM 0.843 instead of 0.827, and
   0.783 instead of 0.774 on 30 scans of another seed, for one more classifier pass per candidate;
5. malignancy (when the run has that model) on the same patches -> P(malignant).
Findings carry world-mm centres (X, Y, Z), the two probabilities and the diameter of the sphere
with the component's volume. A finding's score (`probability`, what submission.csv ranks by) is
P(nodule) x the segmentation's peak: both models must agree. On the bench's held-out scans, with a
13-minute recipe, this product ranked better than either alone (CPM 0.74-0.76 over segmentation
thresholds 0.15-0.5, against 0.66-0.76 for the classifier alone and 0.68 for the segmentation alone).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from noduleflow.ct import CtVolume, lung_mask
from noduleflow.data.patches import crop_patch, hu_to_unit
from noduleflow.detect.components import Components, find_components
from noduleflow.detect.models import DetectorModels, fuse_batchnorm, load_detector
from noduleflow.detect.runtime import INT8_NAME, OnnxModel, fresh_export, onnx_unet, quantize_unet
from noduleflow.detect.windows import Window, full_windows, lung_windows, segment_windows, window_inputs
from noduleflow.errors import CheckpointError
from noduleflow.models import input_size_of
from noduleflow.train.segment_task import CONTEXT

RUNTIMES = ("auto", "int8", "onnx", "torch")
_AIR_ONLY_HU = -900  # a scan whose every voxel lies below this holds no tissue at all


@dataclass(frozen=True)
class Finding:
    """One detected nodule: world centre (mm, X, Y, Z), voxel centre (I, R, C), score (`probability` =
    classifier x segmentation), P(malignant) or None, equivalent-sphere diameter (mm), the segmentation's
    peak probability and the classifier's P(nodule)."""

    center_xyz: tuple[float, float, float]
    center_irc: tuple[float, float, float]
    probability: float
    malignancy: float | None
    diameter_mm: float
    segmentation: float
    classifier: float

    def to_dict(self) -> dict:
        """The finding as `detections.json` writes it (see `noduleflow.evaluate`)."""
        x, y, z = self.center_xyz
        return {"coordX": x, "coordY": y, "coordZ": z, "probability": self.probability, "malignancy": self.malignancy,
                "diameter_mm": self.diameter_mm, "classifier": self.classifier, "segmentation": self.segmentation}


@dataclass
class ScanResult:
    """Findings of one scan, most probable first; `warnings` explain an empty result; `seconds` is wall time."""

    series_uid: str
    findings: list[Finding]
    shape: tuple[int, int, int]
    seconds: float = 0.0
    candidates: int = 0
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """The detection pipeline over the models of a detector run folder (see `detect.models`).

    threshold: segmentation probability that makes a voxel part of a candidate. min_voxels: smaller
    components are dropped. lung_margin: a component is kept when lung lies within this many voxels
    (per axis) of its centre. max_candidates: classified per scan at most. batch: slices per U-Net
    batch and patches per classifier batch. restrict_to_lung: segment only the lung windows (False:
    every voxel of every slice). window_margin: voxels of context around the lung in each window.
    runtime: "onnx" runs the U-Net under ONNX Runtime (`detect.runtime`, exported beside its
    checkpoint on first use), "torch" in eager PyTorch, the same probabilities; "int8" its int8
    version (`quantize`, which `train detector` runs), faster, probabilities within about 1e-5 on average;
    "auto" (default) int8 when the run has an up-to-date int8 version, else onnx. mirror: the classifier's
    P(nodule) is the mean over the patch and its mirror image (module docstring); False: the patch alone.
    """

    def __init__(self, models: DetectorModels, *, threshold: float = 0.5, min_voxels: int = 2, max_candidates: int = 100,
                 batch: int = 8, restrict_to_lung: bool = True, lung_margin: int = 3, window_margin: int = 4, threads: int = 0,
                 runtime: str = "auto", mirror: bool = True):
        self.models, self.threshold, self.min_voxels, self.mirror = models, float(threshold), int(min_voxels), bool(mirror)
        self.lung_margin, self.window_margin = int(lung_margin), int(window_margin)
        self.max_candidates, self.batch, self.restrict_to_lung = int(max_candidates), int(batch), restrict_to_lung
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if threads:
            torch.set_num_threads(threads)
        int8 = fresh_export(models.segment_checkpoint, INT8_NAME)
        if runtime == "auto":
            runtime = "onnx" if int8 is None else "int8"
        if runtime == "int8" and int8 is None:
            where = models.segment_checkpoint.with_name(INT8_NAME) if models.segment_checkpoint else "the segment run"
            raise CheckpointError("has no up-to-date int8 U-Net", path=where,
                                  fix="Train with `noduleflow train detector` (it writes one), or pass --runtime onnx.")
        self.runtime = runtime
        # measured on 16 x 7 x 160 x 160 slices here: folding batch norm 1.1x faster, channels_last on top 1.6x more
        fuse_batchnorm(models.segment).to(memory_format=torch.channels_last)
        self.segmenter = models.segment
        self.threads = threads
        if runtime == "onnx":  # about 1.3x faster again (detect.runtime)
            self.segmenter = self._onnx()
        elif runtime == "int8":  # the U-Net about 1.3x faster than onnx, the whole scan about 1.2x
            self.segmenter = OnnxModel(int8, threads=threads)
        for model in (models.classify, models.malignancy):
            if model is not None:  # 12 patches: 60 ms as trained, 39 ms folded and channels_last_3d
                fuse_batchnorm(model).to(memory_format=torch.channels_last_3d)

    @property
    def multiple(self) -> int:
        """What the U-Net's window sizes must divide by: 2**(depth - 1), its downsampling factor (4 for a net without `depth`)."""
        return 2 ** (getattr(self.models.segment, "depth", 3) - 1)

    def _onnx(self) -> OnnxModel:
        """The float32 U-Net under ONNX Runtime (exported beside its checkpoint when missing or stale)."""
        return onnx_unet(self.models.segment, self.models.segment_checkpoint, in_channels=2 * CONTEXT + 1,
                         multiple=self.multiple, threads=self.threads)

    def quantize(self, volumes: list[CtVolume], *, every: int = 3, slices: int = 4) -> Path:
        """Write the U-Net's int8 version beside its checkpoint (`detect.runtime.quantize_unet`); returns its path.

        Calibrated on what the U-Net sees in `predict`: `slices` slices of every `every`-th lung window
        of `volumes` (a few training scans; 4 scans give about 25 batches and take well under a minute).
        The Predictor keeps its runtime; a new one (runtime "auto" or "int8") uses the file.
        """
        if self.models.segment_checkpoint is None:
            raise ValueError("this Predictor's U-Net has no checkpoint to write its int8 version beside")
        inputs = []
        for volume in volumes:
            lung = lung_mask(volume, step=2)
            for window in self.windows(volume, lung)[::every]:
                inputs.append(next(window_inputs(volume.hu, window, context=CONTEXT, batch=slices))[1].contiguous().numpy())
        if not inputs:
            raise ValueError("no lung found in the calibration scans: the int8 U-Net needs scans with lungs")
        source = (self.segmenter if self.runtime == "onnx" else self._onnx()).path
        return quantize_unet(source, self.models.segment_checkpoint.with_name(INT8_NAME), inputs)

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> "Predictor":
        """A predictor over `run_dir`'s segment/, classify/ and (optional) malignancy/ runs."""
        return cls(load_detector(run_dir), **kwargs)

    def predict(self, volume: CtVolume) -> ScanResult:
        """All findings of `volume` (see the module docstring); never raises for an empty or lung-less scan."""
        start = time.perf_counter()
        result = ScanResult(volume.series_uid, [], volume.shape)
        lung = lung_mask(volume, step=2) if volume.hu.size else np.zeros(volume.shape, bool)
        if volume.hu.size == 0 or int(volume.hu.max()) < _AIR_ONLY_HU:
            self._warn(result, "holds only air (every voxel below -900 HU); nothing to detect")
        elif not lung.any():
            self._warn(result, "has no lung field (no large air-filled region inside the body); nothing to detect")
        else:
            result.findings, result.candidates = self._detect(volume, lung)
        result.seconds = time.perf_counter() - start
        return result

    def windows(self, volume: CtVolume, lung: np.ndarray) -> list[Window]:
        """The windows the U-Net sees in `volume` (the lung's, or whole slices when not `restrict_to_lung`)."""
        if self.restrict_to_lung:
            return lung_windows(lung, chunk=self.batch, margin=self.window_margin, multiple=self.multiple)
        return full_windows(volume.shape, chunk=self.batch, multiple=self.multiple)

    def segment(self, volume: CtVolume, lung: np.ndarray) -> np.ndarray:
        """(I, R, C) float32 nodule probabilities (0 outside the segmented windows)."""
        return segment_windows(self.segmenter, volume.hu, self.windows(volume, lung), context=CONTEXT, batch=self.batch,
                               channels_last=self.runtime == "torch")

    def candidates(self, volume: CtVolume, lung: np.ndarray) -> Components:
        """Steps 2-3 (module docstring): the segmentation's components near lung, highest peak first, at most `max_candidates`."""
        probs = self.segment(volume, lung)
        comps = find_components(probs, volume.spacing_xyz, threshold=self.threshold, min_voxels=self.min_voxels)
        rounded = np.clip(np.floor(comps.centers_irc + 0.5).astype(np.int64), 0, np.array(volume.shape) - 1)
        m = self.lung_margin
        comps = comps.take(np.array([lung[max(i - m, 0):i + m + 1, max(r - m, 0):r + m + 1, max(c - m, 0):c + m + 1].any()
                                     for i, r, c in rounded.tolist()], dtype=bool))
        return comps.take(np.argsort(-comps.peak, kind="stable")[:self.max_candidates])

    def _detect(self, volume: CtVolume, lung: np.ndarray) -> tuple[list[Finding], int]:
        comps = self.candidates(volume, lung)
        if len(comps) == 0:
            return [], 0
        nodule, malignant = self._classify(volume, comps.centers_irc)
        score = nodule * comps.peak
        xyz = volume.irc_to_xyz(comps.centers_irc).reshape(-1, 3)
        findings = [Finding(tuple(map(float, xyz[i])), tuple(map(float, comps.centers_irc[i])), float(score[i]),
                            None if malignant is None else float(malignant[i]), float(comps.diameter_mm[i]), float(comps.peak[i]),
                            float(nodule[i]))
                    for i in range(len(comps))]
        return sorted(findings, key=lambda f: -f.probability), len(comps)

    @torch.inference_mode()
    def _classify(self, volume: CtVolume, centers_irc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) P(nodule) and (N,) P(malignant) or None for patches of `volume` around (N, 3) fractional voxel centres."""
        if self.models.classify is None:
            raise ValueError("this Predictor has no nodule classifier: only `candidates` works without one")
        nodule = self._probabilities("classify", volume, centers_irc)
        malignant = None if self.models.malignancy is None else self._probabilities("malignancy", volume, centers_irc)
        return nodule, malignant

    def _probabilities(self, part: str, volume: CtVolume, centers_irc: np.ndarray) -> np.ndarray:
        """(N,) P(class 1) of the `part` model on patches around (N, 3) voxel centres, cut as it was trained on them.

        Patches of its input size in voxels (centred on the nearest voxel), or resampled from its
        `patch_mm` when it was trained on patches sized in mm.
        """
        size, size_mm, spacing_irc = self.patch_size(part), self.models.patch_mm.get(part), volume.spacing_irc
        out = [self.score_patches(part, np.stack([crop_patch(volume.hu, c, size, size_mm, spacing_irc)
                                                   for c in centers_irc[b:b + 4 * self.batch]]))  # (B, D, H, W)
               for b in range(0, len(centers_irc), 4 * self.batch)]
        return np.concatenate(out)

    def patch_size(self, part: str = "classify") -> tuple[int, ...]:
        """(D, H, W) voxels of the patches the `part` model ("classify" or "malignancy") takes."""
        return tuple(input_size_of(getattr(self.models, part)))

    @torch.inference_mode()
    def score_patches(self, part: str, patches_hu: np.ndarray) -> np.ndarray:
        """(N,) P(class 1) of the `part` model for (N, D, H, W) HU patches of its `patch_size`, already cut.

        The classifier's is averaged with its mirror image's when `mirror` (one batch of 2N patches).
        """
        model = getattr(self.models, part)
        if model is None:
            raise ValueError(f"this Predictor has no {part} model")
        x = torch.from_numpy(hu_to_unit(np.asarray(patches_hu)))[:, None]        # (B, 1, D, H, W)
        mirror = self.mirror and part == "classify"
        if mirror:
            x = torch.cat([x, x.flip((2, 3, 4))])                                 # (2B, 1, D, H, W)
        p = torch.softmax(model(x.contiguous(memory_format=torch.channels_last_3d)).float(), 1)[:, 1]
        return (p.view(2, -1).mean(0) if mirror else p).numpy()

    def classify_patches(self, patches_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) P(nodule) and (N,) P(malignant) (None without a malignancy model) for (N, D, H, W) HU patches
        of the classifier's `patch_size` (the server's /v1/classify). Both models take the same patch size
        (malignancy is fine-tuned from the classifier)."""
        nodule = self.score_patches("classify", patches_hu)
        return nodule, None if self.models.malignancy is None else self.score_patches("malignancy", patches_hu)

    @staticmethod
    def _warn(result: ScanResult, text: str) -> None:
        message = f"scan {result.series_uid or '(unnamed)'} {text}"
        result.warnings.append(message)
        warnings.warn(message, stacklevel=3)
