"""`Predictor`: one scan in, nodule findings out; what `noduleflow detect` and the server both call.

Steps (shapes for one scan of I x R x C voxels):
1. lung field: `ct.lung_mask` on every second row and column (3.5x faster, its edge off by a voxel)
   -> (I, R, C) bool; no lung (or a scan of only air) -> no findings and a warning;
2. segmentation: the 2D U-Net over lung-holding slices and boxes (`detect.windows`) -> (I, R, C) probabilities;
   a scan whose voxel spacing lies outside that of the U-Net's training scans is segmented resampled to their
   median spacing, and step 3's candidates are mapped back onto its voxels (`detect.grid`);
3. grouping: threshold + 3D connected components (`detect.components`); components with no lung
   voxel within `lung_margin` voxels of their centre are dropped (a nodule on the pleura or a dense
   one the lung mask left out stays); with `inner_peaks` (default), also the map's local maxima above the
   threshold inside them that lie farther than a nodule radius (`detect.peaks`) from every component's centre:
   a nodule fused with a vessel or the pleura into one component otherwise gets a mark at the fused blob's
   centre, outside the nodule; all ranked by peak probability (at most `rank_candidates`);
   then, with `peaks` (off by default), the map's local maxima below the threshold, away from every component
   (`detect.peaks`): small, faint and pleural nodules often peak there; they take the places the components
   leave, and at least `peak_share` of the places (the weakest components give way), since a scan can hold
   hundreds of components. Off by default because on the development scans a detector trained with them
   found no more nodules with them, while every scan then classifies the full `rank_candidates` (docs/decisions.md);
   mining uses them (`recipes.mining`), so the classifier has seen such candidates;
4. classification: (N, 1, D, H, W) patches (the classifier's `input_size`) around the centres, in batches -> P(nodule),
   by default the mean over each patch and its mirror image (flipped along all three axes, as training's
   augmentation flips): on the bench's 30 held-out full-resolution scans, CPM 0.843 instead of 0.827, and
   0.783 instead of 0.774 on 30 scans of another seed, for one more classifier pass per candidate;
   the best `max_candidates` by score (below) are kept: a full-resolution scan can hold hundreds of components, and
   a faint nodule's peak ranks it behind vessel ends that the classifier then rejects, so the classifier, not
   the peak alone, chooses the marks (`rank_candidates` of them scored);
4b. blobs (with `blob_weight` > 0, the default): the lung's blob maxima (`detect.blobs`: multi-scale LoG over the
   lung field) farther than 3 mm from every kept candidate, each scored by the classifier; those it calls
   nodules (P > 0.5) join the candidates with the score P(nodule) x `blob_weight`, and the best `max_candidates`
   of all are kept. The U-Net gives most missed nodules (small, faint, pleural) no candidate at all, while the
   classifier recognises many of them from a patch (docs/decisions.md); a blob ranks below a candidate both
   models call likely, since its weight stands in for the U-Net's peak. The scan's own grid, also where the
   U-Net reads it resampled;
5. malignancy (when the run has that model) on the kept candidates -> P(malignant). By default from the run's
   measured model where it has one (`detect.measure`: size, density and calcium read off a 24 mm patch, then a
   logistic regression fitted on the training scans' labelled nodules), which ranked malignancy better than
   the network on the development scans (docs/decisions.md); else (or with `malignancy_model="network"`) the
   malignancy network, fine-tuned from the classifier with its first blocks frozen, so where the run has the
   joint net (`Nets.joint`: `noduleflow export` writes it, the torch runtime builds it) those blocks run once
   for both models, on every candidate of step 4, instead of a second full pass on the kept ones.
Findings carry world-mm centres (X, Y, Z), the two probabilities and a diameter: with the measured model, the
one it measures along the finding's free rays (calibrated on the training nodules' annotated diameters; it
follows the annotations far more closely than a component's volume, which fuses with vessels: docs/decisions.md),
else the diameter of the sphere with the component's volume.
A finding's score (`probability`, what submission.csv ranks by) is
P(nodule) x the segmentation's peak: both models must agree. On the bench's held-out scans, with a
13-minute recipe, this product ranked better than either alone (CPM 0.74-0.76 over segmentation
thresholds 0.15-0.5, against 0.66-0.76 for the classifier alone and 0.68 for the segmentation alone).

Every step but the models is numpy and scipy; the models are `detect.contract.Net`s (numpy in, numpy
out) in eager PyTorch or ONNX Runtime, and each model's input (HU window, context slices, patch size)
comes from its `InputContract`, saved with the run. So with the exported runtimes ("onnx", "int8")
this module, and the process, never import torch. Constructing a Predictor changes nothing outside it:
no thread counts, no files, and the caller's models stay as given (batch norm is folded into copies).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from noduleflow.ct import CtVolume, lung_mask
from noduleflow.data.patches import crop_patch
from noduleflow.detect.blobs import lung_blobs, pick_blobs
from noduleflow.detect.components import Components, find_components, sphere_diameter_mm, with_points
from noduleflow.detect.contract import Nets, softmax1
from noduleflow.detect.grid import SegmentGrid
from noduleflow.detect.measure import crop_measured, nodule_measures
from noduleflow.detect.peaks import probability_peaks
from noduleflow.detect.windows import Window, full_windows, lung_windows, segment_windows
from noduleflow.errors import NoduleflowError

RUNTIMES = ("auto", "int8", "onnx", "torch")
MALIGNANCY_MODELS = ("measured", "network")
DEFAULT_THRESHOLD = 0.2
"""The segmentation probability that makes a voxel part of a candidate: low, since the classifier chooses the marks
among `rank_candidates`; at 0.2 more development nodules got a candidate than at 0.5, for a few % more time
(docs/decisions.md). `detect --threshold` and the server's settings default to it."""
DEFAULT_BLOB_WEIGHT = 0.25
"""A blob candidate's score is P(nodule) x this (`Predictor`'s `blob_weight`): below a U-Net candidate that both
models call likely, above the weak ones. At 1 (ranked as U-Net candidates) they cost CPM on the development
scans, their false positives then outranking true U-Net marks (docs/decisions.md)."""
BLOB_FIRST_LOOK = 0.3
"""A blob is scored with its mirror image only where its patch alone gives P(nodule) above this: most blobs are
vessels the classifier rejects at a glance, and the second look would double their cost."""
FRAME_COLUMNS = (
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "index_i",
    "index_r",
    "index_c",
    "diameter_mm",
    "probability",
    "malignancy",
    "classifier",
    "segmentation",
)
"""The columns of `ScanResult.to_frame`: world mm (X, Y, Z, the LUNA16 CSVs' names), fractional voxel
indices (I, R, C), then the finding's size and scores as detections.json names them."""
_AIR_ONLY_HU = -900  # a scan whose every voxel lies below this holds no tissue at all
INNER_MAX_MM = 40.0
"""`inner_peaks` come from components up to this equivalent-sphere diameter: a nodule (LUNA16 lists 3-30 mm) with
the vessel it touches, not a stretch of chest wall or diaphragm the segmentation marked, which would give a
candidate every few mm along it."""


@dataclass(frozen=True)
class Finding:
    """One detected nodule: world centre (mm, X, Y, Z), voxel centre (I, R, C), score (`probability` =
    classifier x segmentation), P(malignant) or None, diameter (mm; module docstring), the segmentation's
    peak probability (for a blob candidate, module docstring step 4b: the Predictor's `blob_weight`) and the
    classifier's P(nodule)."""

    center_xyz: tuple[float, float, float]
    center_irc: tuple[float, float, float]
    probability: float
    malignancy: float | None
    diameter_mm: float
    segmentation: float
    classifier: float

    def to_dict(self) -> dict:
        """The finding as `detections.json` writes it (`noduleflow.detect.detections_file`)."""
        x, y, z = self.center_xyz
        return {
            "coordX": x,
            "coordY": y,
            "coordZ": z,
            "probability": self.probability,
            "malignancy": self.malignancy,
            "diameter_mm": self.diameter_mm,
            "classifier": self.classifier,
            "segmentation": self.segmentation,
        }


@dataclass
class ScanResult:
    """Findings of one scan, most probable first; `warnings` explain an empty result; `seconds` is wall time.

    candidates: how many the findings were chosen from: the segmentation's that the classifier scored (up to the
    Predictor's `rank_candidates`) and the blob candidates it called nodules. candidate_mask: (I, R, C) bool, the
    voxels of the findings' components (the segmentation above its threshold), or None when nothing was
    segmented; what `detect` writes as masks/<seriesuid>.nii.gz and the server overlays on the slices.
    """

    series_uid: str
    findings: list[Finding]
    shape: tuple[int, int, int]
    seconds: float = 0.0
    candidates: int = 0
    warnings: list[str] = field(default_factory=list)
    candidate_mask: np.ndarray | None = None

    def to_dict(self) -> dict:
        """The result as plain JSON types (str, int, float, None, lists, dicts), for `json.dumps` or a notebook.

        Keys: seriesuid, shape (I, R, C voxels), seconds, candidates (scored), warnings, findings. Each finding
        is its detections.json entry (`Finding.to_dict`: coordX/Y/Z mm, probability, malignancy or None,
        diameter_mm, classifier, segmentation) plus center_irc (fractional voxel indices), as the server's
        /v1/scans answer has it. The candidate mask, a whole volume, is left out.
        """
        return {
            "seriesuid": self.series_uid,
            "shape": [int(n) for n in self.shape],
            "seconds": float(self.seconds),
            "candidates": int(self.candidates),
            "warnings": list(self.warnings),
            "findings": [dict(f.to_dict(), center_irc=[float(v) for v in f.center_irc]) for f in self.findings],
        }

    def to_frame(self):
        """A pandas DataFrame, one row per finding (most probable first), columns `FRAME_COLUMNS`.

        center_irc becomes the columns index_i, index_r, index_c; malignancy is NaN when the run has no
        malignancy model, so the column stays float. No findings -> an empty frame with the same columns.
        pandas is imported here only: the rest of detection does without it.
        """
        try:
            import pandas as pd
        except ImportError:
            raise NoduleflowError(
                "ScanResult.to_frame needs pandas, which is not installed", fix="Install it: pip install pandas"
            ) from None
        rows = [
            (self.series_uid, *f.center_xyz, *f.center_irc, f.diameter_mm, f.probability)
            + (np.nan if f.malignancy is None else f.malignancy, f.classifier, f.segmentation)
            for f in self.findings
        ]
        frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
        return frame.astype({c: "float64" for c in FRAME_COLUMNS[1:]})


class Predictor:
    """The detection pipeline over the models of a detector run folder (see `detect.models`, `detect.runtime`).

    models: `Nets` (numpy callables with their input contracts), or the torch `DetectorModels` of a run,
    which `runtime` decides how to run. threshold: segmentation probability that makes a voxel part of a
    candidate. min_voxels: smaller components are dropped. lung_margin: a component is kept when lung lies
    within this many voxels (per axis) of its centre. max_candidates: findings kept per scan at most (LUNA16 scores
    100 marks a scan); rank_candidates: candidates the classifier scores to choose them (at least max_candidates).
    inner_peaks: also the map's maxima inside components, away from their centres (module docstring). batch:
    slices per U-Net batch and patches per classifier batch. restrict_to_lung: segment only the lung
    windows (False: every voxel of every slice). window_margin: voxels of context around the lung in each
    window. threads: CPU threads of the models (0: the runtime's choice), never set process-wide.
    runtime (for `DetectorModels`): "torch" eager PyTorch; "onnx" / "int8" the run's exports
    (`noduleflow export`: float32 ONNX, or the U-Net in int8), read from RUN/export/; "auto" (default)
    each model where it runs fastest: the U-Net from the exports (int8, else onnx) under ONNX Runtime, whose
    fused 2D convolutions beat eager PyTorch's, and the 3D classifiers in eager PyTorch (batch norm folded,
    channels_last_3d; in bfloat16 on a CPU with AMX or AVX512-BF16), whose 3D convolutions beat ONNX Runtime's
    (docs/decisions.md); without exports all in torch. Its `runtime` reads e.g. "int8+torch" ("int8+torch-bf16"
    in bfloat16). mirror: the classifier's P(nodule) is the mean
    over the patch and its mirror image (module docstring); False: the patch alone. peaks: add the
    segmentation's peaks below `threshold` as candidates (`detect.peaks`), in at least `peak_share` (a fraction)
    of the `max_candidates` places; a peak's diameter is one voxel's and its `segmentation` the map's value there.
    segment_mirror: the U-Net's map is the mean over each slice and its left-right mirror image (two U-Net passes).
    resample: a scan whose voxel spacing lies outside the U-Net's training scans' (a 2 mm-pixel scan for a U-Net
    trained on 0.6-0.9 mm) is segmented resampled to their median spacing (`detect.grid`); False: as it is.
    malignancy_model: "measured" (default) P(malignant) from the run's measured model where it has one, else from
    the network; "network": from the network (module docstring, step 5). `malignancy_source` says which runs.
    blob_weight: 0-1, a blob candidate's score is P(nodule) x this (module docstring, step 4b); 0: no blob candidates.
    """

    def __init__(
        self,
        models,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        min_voxels: int = 2,
        max_candidates: int = 100,
        batch: int = 8,
        restrict_to_lung: bool = True,
        lung_margin: int = 3,
        window_margin: int = 4,
        threads: int = 0,
        runtime: str = "auto",
        mirror: bool = True,
        peaks: bool = False,
        peak_share: float = 0.3,
        rank_candidates: int = 300,
        inner_peaks: bool = True,
        segment_mirror: bool = False,
        resample: bool = True,
        malignancy_model: str = "measured",
        blob_weight: float = DEFAULT_BLOB_WEIGHT,
    ):
        self.threshold, self.min_voxels, self.mirror = float(threshold), int(min_voxels), bool(mirror)
        self.lung_margin, self.window_margin = int(lung_margin), int(window_margin)
        self.max_candidates, self.batch, self.restrict_to_lung = int(max_candidates), int(batch), restrict_to_lung
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.threads, self.peaks, self.peak_share = int(threads), bool(peaks), float(peak_share)
        self.rank_candidates = max(int(rank_candidates), self.max_candidates)
        self.inner_peaks, self.segment_mirror, self.resample = bool(inner_peaks), bool(segment_mirror), bool(resample)
        if malignancy_model not in MALIGNANCY_MODELS:
            raise ValueError(
                f"malignancy_model must be one of {', '.join(MALIGNANCY_MODELS)}, got {malignancy_model!r}"
            )
        self.nets = models if isinstance(models, Nets) else _nets_of(models, runtime, self.threads)
        self.runtime = self.nets.runtime
        self.contracts = self.nets.contracts
        self.measured = self.nets.measured if malignancy_model == "measured" else None
        if not 0.0 <= float(blob_weight) <= 1.0:
            raise ValueError(f"blob_weight must lie in 0..1 (0: no blob candidates), got {blob_weight!r}")
        self.blob_weight = float(blob_weight)

    @property
    def malignancy_source(self) -> str | None:
        """Where P(malignant) comes from: "measured", "network", or None (the run has no malignancy model)."""
        if self.measured is not None:
            return "measured"
        return "network" if self.nets.malignancy is not None else None

    @classmethod
    def from_run(cls, run_dir: str | Path, *, runtime: str = "auto", threads: int = 0, **kwargs) -> Predictor:
        """A predictor over `run_dir`'s segment/, classify/ and (optional) malignancy/ models: its exports
        (RUN/export/) for runtime "onnx" or "int8", its best.pt files for "torch"; "auto" runs the U-Net from
        the exports and the classifiers from their best.pt files (`Predictor`), or the exports alone where the
        run has no best.pt. The exported runtimes load without torch."""
        from noduleflow.detect.runtime import exported_runtime, load_exported

        if runtime == "auto" and not (Path(run_dir) / "classify" / "best.pt").is_file():
            runtime = exported_runtime(run_dir) or "torch"  # a run shipped as RUN/export/ alone, or a missing one
        if runtime in ("onnx", "int8"):
            return cls(load_exported(run_dir, runtime, threads=threads), threads=threads, **kwargs)
        if runtime not in ("auto", "torch"):
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        from noduleflow.detect.models import load_detector

        return cls(load_detector(run_dir), runtime=runtime, threads=threads, **kwargs)

    @property
    def multiple(self) -> int:
        """What the U-Net's window sizes must divide by: 2**(depth - 1), its downsampling factor."""
        return self.contracts["segment"].multiple

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
            grid = self.grid(volume, lung)
            if grid is not None and grid.capped:
                self._warn(
                    result,
                    f"needs a {' x '.join(map(str, grid.volume.shape))}-voxel grid at the U-Net's spacing, more than "
                    "it may hold: segmented at a coarser spacing, so small nodules may be missed",
                )
            result.findings, result.candidates, result.candidate_mask = self._detect(volume, lung, grid)
        result.seconds = time.perf_counter() - start
        return result

    def windows(self, volume: CtVolume, lung: np.ndarray) -> list[Window]:
        """The windows the U-Net sees in `volume` (the lung's, or whole slices when not `restrict_to_lung`)."""
        if self.restrict_to_lung:
            return lung_windows(lung, chunk=self.batch, margin=self.window_margin, multiple=self.multiple)
        return full_windows(volume.shape, chunk=self.batch, multiple=self.multiple)

    def segment(self, volume: CtVolume, lung: np.ndarray) -> np.ndarray:
        """(I, R, C) float32 nodule probabilities (0 outside the segmented windows)."""
        contract = self.contracts["segment"]
        return segment_windows(
            self.nets.segment,
            volume.hu,
            self.windows(volume, lung),
            context=contract.context,
            batch=self.batch,
            to_unit=contract.to_unit,
            mirror=self.segment_mirror,
        )

    def grid(self, volume: CtVolume, lung: np.ndarray | None = None) -> SegmentGrid | None:
        """`volume` resampled to the U-Net's training spacing where it lies outside it (`detect.grid`): only the
        box of `lung` and what the U-Net's windows read around it, when given and `restrict_to_lung`; None: the
        U-Net sees the scan as it is (within that spacing, or `resample` off, or a run that did not record it)."""
        if not self.resample:
            return None
        contract = self.contracts["segment"]
        around = self.window_margin + self.multiple + 1  # a window's margin, rounded up to the U-Net's multiple
        return SegmentGrid.of(
            volume,
            contract.spacing_ranges,
            lung if self.restrict_to_lung else None,
            pad=(contract.context + 1, around, around),
        )

    def candidates(self, volume: CtVolume, lung: np.ndarray, limit: int | None = None) -> Components:
        """Steps 2-3 (module docstring): the segmentation's components near lung (with `inner_peaks`, also the
        map's maxima inside them far from their centres), highest peak first, then (with `peaks`) the map's peaks
        below the threshold, highest first; at most `limit` (default `rank_candidates`) in all, of which the peaks
        take `peak_share` of them when the components would fill the list. On the scan's voxels, found on
        `grid(volume)` where the scan is resampled for the U-Net."""
        return self._candidates(volume, lung, self.grid(volume, lung), limit)

    def _candidates(
        self, volume: CtVolume, lung: np.ndarray, grid: SegmentGrid | None, limit: int | None
    ) -> Components:
        if grid is not None:
            return grid.to_scan(self._candidates(grid.volume, grid.mask_to_grid(lung), None, limit))
        limit = self.rank_candidates if limit is None else int(limit)
        probs = self.segment(volume, lung)
        comps = find_components(probs, volume.spacing_xyz, threshold=self.threshold, min_voxels=self.min_voxels)
        comps = comps.take(self._near_lung(comps.centers_irc, lung))
        if self.inner_peaks:
            centers, values = probability_peaks(
                probs, comps.centers_irc, volume.spacing_irc, floor=self.threshold, threshold=1.0, limit=limit
            )
            blob_mm = sphere_diameter_mm(comps.voxels_at(centers, volume.shape), volume.spacing_xyz)
            keep = self._near_lung(centers, lung) & (blob_mm <= INNER_MAX_MM)
            comps = with_points(comps, centers[keep], values[keep], volume.spacing_xyz)
        comps = comps.take(np.argsort(-comps.peak, kind="stable"))
        if not self.peaks:
            return comps.take(np.arange(min(len(comps), limit)))
        room = max(limit - len(comps), int(self.peak_share * limit))
        centers, values = probability_peaks(
            probs, comps.centers_irc, volume.spacing_irc, threshold=self.threshold, limit=4 * room + 8
        )
        near = self._near_lung(centers, lung)
        centers, values = centers[near][:room], values[near][:room]
        comps = comps.take(np.arange(min(len(comps), limit - len(centers))))
        return with_points(comps, centers, values, volume.spacing_xyz)

    def _near_lung(self, centers_irc: np.ndarray, lung: np.ndarray) -> np.ndarray:
        """(N,) bool: lung lies within `lung_margin` voxels (per axis) of each (N, 3) centre."""
        rounded = np.clip(np.floor(centers_irc + 0.5).astype(np.int64), 0, np.array(lung.shape) - 1)
        m = self.lung_margin
        return np.array(
            [
                lung[max(i - m, 0) : i + m + 1, max(r - m, 0) : r + m + 1, max(c - m, 0) : c + m + 1].any()
                for i, r, c in rounded.reshape(-1, 3).tolist()
            ],
            dtype=bool,
        )

    def _detect(
        self, volume: CtVolume, lung: np.ndarray, grid: SegmentGrid | None
    ) -> tuple[list[Finding], int, np.ndarray]:
        comps = self._candidates(volume, lung, grid, None)
        if self.nets.classify is None:
            raise ValueError("this Predictor has no nodule classifier: only `candidates` works without one")
        classified = len(comps)
        comps, nodule, malignant = self._best(comps, *self._nodule_scores(volume, comps.centers_irc))
        if self.blob_weight > 0:  # the second source, ranked below what both models agree on
            before = len(comps)
            comps, nodule, malignant = self._with_blobs(volume, lung, comps, nodule, malignant)
            classified += len(comps) - before
            comps, nodule, malignant = self._best(comps, nodule, malignant)
        if not len(comps):
            return [], 0, comps.mask(volume.shape)
        score = nodule * comps.peak
        diameters = comps.diameter_mm
        if self.measured is not None:  # P(malignant) and the diameter along the finding's free rays
            measures = nodule_measures(crop_measured(volume, comps.centers_irc))
            malignant, diameters = self.measured.probabilities(measures), self.measured.diameters_mm(measures)
        elif self.nets.malignancy is not None and not self._joint:
            malignant = self._probabilities("malignancy", volume, comps.centers_irc)
        xyz = volume.irc_to_xyz(comps.centers_irc).reshape(-1, 3)
        findings = [
            Finding(
                tuple(map(float, xyz[i])),
                tuple(map(float, comps.centers_irc[i])),
                float(score[i]),
                None if malignant is None else float(malignant[i]),
                float(diameters[i]),
                float(comps.peak[i]),
                float(nodule[i]),
            )
            for i in range(len(comps))
        ]
        return sorted(findings, key=lambda f: -f.probability), classified, comps.mask(volume.shape)

    def _nodule_scores(self, volume: CtVolume, centers_irc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) P(nodule) at (N, 3) voxel centres and, with the joint net, (N,) P(malignant) from the same pass
        (cheaper than malignancy's own pass on the kept ones); else None."""
        if not len(centers_irc):
            return np.zeros(0, np.float32), np.zeros(0, np.float32) if self._joint else None
        if self._joint:
            return self._probabilities("classify", volume, centers_irc, self.classify_patches)
        return self._probabilities("classify", volume, centers_irc), None

    def _best(self, comps: Components, nodule: np.ndarray, malignant: np.ndarray | None):
        """The best `max_candidates` of `comps` by score, P(nodule) x peak, in their order (stable: ties keep it)."""
        if len(comps) <= self.max_candidates:
            return comps, nodule, malignant
        best = np.sort(np.argsort(-(nodule * comps.peak), kind="stable")[: self.max_candidates])
        return comps.take(best), nodule[best], None if malignant is None else malignant[best]

    def _with_blobs(self, volume: CtVolume, lung: np.ndarray, comps: Components, nodule, malignant):
        """`comps` and their P(nodule) and P(malignant) (None: not computed yet), followed by the lung's blob
        maxima (`detect.blobs`) that the classifier calls nodules, away from every candidate; each blob's `peak`
        is `blob_weight`, so its score is P(nodule) x `blob_weight`. The classifier first reads each blob's patch
        alone, then with its mirror image (`mirror`) only where that first look passes `BLOB_FIRST_LOOK`, the
        `max_candidates` likeliest at most (a weak classifier passes most blobs)."""
        centers, _ = lung_blobs(volume.hu, lung, volume.spacing_irc)
        if len(centers):
            glance = self._probabilities(
                "classify", volume, centers, lambda p: self.score_patches("classify", p, False)
            )
            likeliest = np.argsort(-glance, kind="stable")[: self.max_candidates]  # no more can be kept
            centers = centers[likeliest[glance[likeliest] > BLOB_FIRST_LOOK]]
        blob_nodule, blob_malignant = self._nodule_scores(volume, centers)
        keep = pick_blobs(centers, blob_nodule, comps.centers_irc, volume.spacing_irc)
        comps = with_points(comps, centers[keep], np.full(len(keep), self.blob_weight), volume.spacing_xyz)
        nodule = np.concatenate([nodule, blob_nodule[keep]])
        if malignant is not None:
            malignant = np.concatenate([malignant, blob_malignant[keep]])
        return comps, nodule, malignant

    def _probabilities(self, part: str, volume: CtVolume, centers_irc: np.ndarray, scorer=None):
        """(N,) P(class 1) of the `part` model on patches around (N, 3) voxel centres, cut as it was trained on them.

        Patches of its input size in voxels (centred on the nearest voxel), or resampled from its
        `patch_mm` when it was trained on patches sized in mm. scorer: what scores each batch of HU patches
        instead of `score_patches(part, ...)`; one returning a tuple of arrays gives a tuple of (N,) arrays.
        """
        size, size_mm, spacing_irc = self.patch_size(part), self.contracts[part].patch_mm or None, volume.spacing_irc
        scorer = scorer or (lambda patches: self.score_patches(part, patches))
        step = 4 * self.batch
        out = [
            scorer(np.stack([crop_patch(volume.hu, c, size, size_mm, spacing_irc) for c in centers_irc[b : b + step]]))
            for b in range(0, len(centers_irc), step)
        ]  # each a (B,) array, or a tuple of them
        if isinstance(out[0], tuple):
            return tuple(np.concatenate(column) for column in zip(*out, strict=True))
        return np.concatenate(out)

    def patch_size(self, part: str = "classify") -> tuple[int, ...]:
        """(D, H, W) voxels of the patches the `part` model ("classify" or "malignancy") takes."""
        if part not in self.contracts:
            raise ValueError(f"this Predictor has no {part} model")
        return tuple(self.contracts[part].patch_size)

    def score_patches(self, part: str, patches_hu: np.ndarray, mirror: bool | None = None) -> np.ndarray:
        """(N,) P(class 1) of the `part` model for (N, D, H, W) HU patches of its `patch_size`, already cut.

        The classifier's is averaged with its mirror image's when `mirror` (default: the Predictor's; one batch
        of 2N patches).
        """
        net = self.nets.net(part)
        if net is None:
            raise ValueError(f"this Predictor has no {part} model")
        x = self.contracts[part].to_unit(np.asarray(patches_hu))[:, None]  # (B, 1, D, H, W)
        mirror = (self.mirror if mirror is None else mirror) and part == "classify"
        if mirror:
            x = np.concatenate([x, _mirrored(x)])  # (2B, 1, D, H, W)
        p = softmax1(net(np.ascontiguousarray(x)))
        return p.reshape(2, -1).mean(0) if mirror else p

    def classify_patches(self, patches_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) P(nodule) and (N,) P(malignant) (None without a malignancy model) for (N, D, H, W) HU patches
        of the classifier's `patch_size` (the server's /v1/classify). Both models take the same patch size
        (malignancy is fine-tuned from the classifier). With the joint net (`Nets.joint`), one pass gives
        both, plus the classifier alone on the mirror images when `mirror`. The measured model (where it runs)
        reads the same patches when the classifier's are cut in mm, else the network scores them."""
        measured, patch_mm = self.measured, self.contracts["classify"].patch_mm
        if measured is not None and patch_mm:
            spacing = np.divide(patch_mm, self.patch_size("classify"))
            return self.score_patches("classify", patches_hu), measured(np.asarray(patches_hu), spacing)
        if not self._joint:
            nodule = self.score_patches("classify", patches_hu)
            return nodule, None if self.nets.malignancy is None else self.score_patches("malignancy", patches_hu)
        x = np.ascontiguousarray(self.contracts["classify"].to_unit(np.asarray(patches_hu))[:, None])
        logits = self.nets.joint(x)  # (N, 4): the classifier's two, then malignancy's two
        nodule, malignant = softmax1(logits[:, :2]), softmax1(logits[:, 2:])
        if self.mirror:
            mirrored = softmax1(self.nets.classify(np.ascontiguousarray(_mirrored(x))))
            nodule = np.stack([nodule, mirrored]).mean(0)
        return nodule, malignant

    @property
    def _joint(self) -> bool:
        """Whether the classifier and malignancy network run as one net (`Nets.joint`: they share their first
        layers); not when the measured model gives P(malignant)."""
        joint = self.nets.joint is not None and self.nets.malignancy is not None and self.nets.classify is not None
        return joint and self.measured is None

    @staticmethod
    def _warn(result: ScanResult, text: str) -> None:
        message = f"scan {result.series_uid or '(unnamed)'} {text}"
        result.warnings.append(message)
        warnings.warn(message, stacklevel=3)


def _mirrored(x: np.ndarray) -> np.ndarray:
    """(B, 1, D, H, W) patches flipped along all three axes, as the classifier's training augmentation flips them."""
    return x[:, :, ::-1, ::-1, ::-1]


def _nets_of(models, runtime: str, threads: int) -> Nets:
    """The `Nets` a Predictor runs for torch `DetectorModels` and `runtime` (see `Predictor`)."""
    from noduleflow.detect.runtime import exported_runtime, load_exported

    if runtime == "auto":
        exported = exported_runtime(models.run_dir)
        if exported is not None and models.classify is not None:
            return _mixed_nets(models, exported, threads)
        runtime = exported or "torch"
    if runtime == "torch":
        from noduleflow.detect.models import torch_nets

        return torch_nets(models, threads=threads)
    if models.run_dir is None:
        raise ValueError(
            f"runtime {runtime!r} runs a run folder's exports, and these models have none; use runtime 'torch'"
        )
    parts = tuple(part for part in ("segment", "classify", "malignancy") if getattr(models, part) is not None)
    return load_exported(models.run_dir, runtime, parts=parts, threads=threads)


def _mixed_nets(models, exported: str, threads: int) -> Nets:
    """Runtime "auto": the U-Net from the run's `exported` runtime ("int8" or "onnx") under ONNX Runtime, the
    classifiers (and their joint net) in eager PyTorch, each where it runs fastest (`Predictor`); in bfloat16
    where the CPU computes it natively (AMX or AVX512-BF16), which moves no development finding (docs/decisions.md)."""
    from noduleflow.detect.models import torch_nets
    from noduleflow.detect.runtime import load_exported
    from noduleflow.train.wrap import cpu_has_native_bf16

    unet = load_exported(models.run_dir, exported, parts=("segment",), threads=threads)
    bf16 = cpu_has_native_bf16()
    classifiers = torch_nets(models, threads=threads, parts=("classify", "malignancy"), bf16=bf16)
    return replace(
        classifiers,
        segment=unet.segment,
        contracts={**classifiers.contracts, "segment": unet.contracts["segment"]},
        runtime=f"{exported}+torch" + ("-bf16" if bf16 else ""),
        files={**classifiers.files, **unet.files},
    )
