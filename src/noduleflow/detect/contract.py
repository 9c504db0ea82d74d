"""What each model of a detector takes and returns, and the models as plain numpy callables.

An `InputContract` is everything a caller must know to feed a model without its training code:
the HU window scaled to [-1, 1], the U-Net's context slices and the multiple its window sizes
must divide by, a classifier's patch size in voxels and (when trained on resampled patches) in mm.
`detect.models` derives it from each part's config.yaml; `noduleflow export` writes it into
RUN/export/manifest.json, from which the ONNX runtime reads it without torch or the configs.

`Nets` holds the models behind one interface, numpy in and numpy out (float32), whether they run
in eager PyTorch (`detect.models.TorchNet`) or ONNX Runtime (`detect.runtime.OrtNet`): the
Predictor's own steps are numpy and scipy, so the ONNX path never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from noduleflow.data.patches import HU_MAX, HU_MIN, hu_to_unit
from noduleflow.detect.grid import SpacingRange
from noduleflow.detect.measure import MeasuredMalignancy

Net = Callable[[np.ndarray], np.ndarray]
"""A model as a function: float32 input batch -> float32 logits (shapes in `OUTPUTS`)."""

PARTS = ("segment", "classify", "malignancy")
OUTPUTS = {
    "segment": "logits (B, 1, H, W) of (B, 2 * context + 1, H, W) slices; sigmoid = P(nodule voxel) of the centre slice",
    "classify": "logits (B, 2) of (B, 1, D, H, W) patches; softmax[:, 1] = P(nodule)",
    "malignancy": "logits (B, 2) of (B, 1, D, H, W) patches; softmax[:, 1] = P(malignant)",
}
JOINT = "joint"
"""The classifier and malignancy model as one net where malignancy shares the classifier's first blocks
(`detect.models.JointNet`); exported as joint.onnx, a manifest entry of this part name."""
JOINT_OUTPUT = (
    "logits (B, 4) of (B, 1, D, H, W) patches: [:, :2] the classifier's (P(nodule) = softmax[:, 1]), [:, 2:] "
    "malignancy's (P(malignant) = softmax[:, 3]); the layers both models share run once"
)


@dataclass(frozen=True)
class InputContract:
    """How one model's input is cut and scaled (see the module docstring).

    kind: "segment" (slices with context) or "patch" (a classifier's 3D patch). hu_window: (low, high)
    HU clipped and mapped linearly to [-1, 1]. context: slices on each side (segment). multiple: the
    U-Net's height and width must divide by it (2**(depth - 1)). patch_size: (D, H, W) voxels (patch).
    patch_mm: (D, H, W) millimetres the patch spans, resampled to patch_size; empty: the scan's own voxels.
    spacing_mm: (segment) per axis I, R, C, the (low, median, high) voxel spacing in mm of the U-Net's training
    scans (`detect.grid`): a scan outside that range is segmented resampled to the median; empty: unknown (a run
    trained before it was recorded), every scan segmented as it is.
    """

    kind: str
    hu_window: tuple[float, float] = (HU_MIN, HU_MAX)
    context: int = 0
    multiple: int = 1
    patch_size: tuple[int, ...] = ()
    patch_mm: tuple[float, ...] = ()
    spacing_mm: tuple[tuple[float, float, float], ...] = ()

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1 if self.kind == "segment" else 1

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """HU (any shape) -> float32 in [-1, 1] through this model's window."""
        low, high = self.hu_window
        if (low, high) == (HU_MIN, HU_MAX):
            return hu_to_unit(np.asarray(hu))  # the training pipeline's own (fast int16) path
        mid, half = (low + high) / 2, (high - low) / 2
        return ((np.clip(np.asarray(hu, np.float32), low, high) - mid) / half).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: _lists(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> InputContract:
        return cls(
            kind=str(data["kind"]),
            hu_window=tuple(float(v) for v in data["hu_window"]),
            context=int(data["context"]),
            multiple=int(data["multiple"]),
            patch_size=tuple(int(v) for v in data["patch_size"]),
            patch_mm=tuple(float(v) for v in data["patch_mm"]),
            spacing_mm=tuple(tuple(float(v) for v in axis) for axis in data.get("spacing_mm", ())),
        )

    @property
    def spacing_ranges(self) -> tuple[SpacingRange, ...]:
        """`spacing_mm` as (I, R, C) `detect.grid.SpacingRange`s (empty where unknown)."""
        return tuple(SpacingRange(*axis) for axis in self.spacing_mm)


@dataclass(frozen=True)
class Nets:
    """The models of a detector as `Net`s, with their contracts; classify (and malignancy) None for a
    segmentation-only bundle (mining). runtime: where they run ("torch", "onnx" or "int8"); files: per
    part, the file each was loaded from (for messages). joint: the classifier and malignancy in one pass
    (`JOINT_OUTPUT`, the classifier's contract), or None where malignancy shares no layer with it. measured:
    the run's measured malignancy model (`detect.measure`: HU patches in, P(malignant) out), or None."""

    segment: Net
    classify: Net | None
    malignancy: Net | None
    contracts: Mapping[str, InputContract]
    runtime: str
    files: Mapping[str, str] = field(default_factory=dict)
    joint: Net | None = None
    measured: MeasuredMalignancy | None = None

    def net(self, part: str) -> Net | None:
        return getattr(self, part)


def _lists(value):
    """Tuples (nested too) as lists, for JSON."""
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def softmax1(logits: np.ndarray) -> np.ndarray:
    """(B, 2) logits -> (B,) probability of class 1, computed stably in float64."""
    z = np.asarray(logits, np.float64)
    return (1.0 / (1.0 + np.exp(z[:, 0] - z[:, 1]))).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, float32, without overflow warnings."""
    from scipy.special import expit

    return expit(np.asarray(logits, np.float32)).astype(np.float32, copy=False)
