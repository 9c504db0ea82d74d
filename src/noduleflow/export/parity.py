"""How far an export may stray from the eager model it came from, measured on real inputs.

Each tolerance is checked on the outputs named in `compared`, over every element of every input
batch (lung windows of training scans for the U-Net, patches around candidates.csv's candidates
for the classifiers). Why these figures:

- onnx (float32): the same arithmetic in another order (ONNX Runtime fuses each conv with its
  ReLU and picks its own kernels); float32 rounding moves a logit by about 1e-6 of its size, and
  logits of a few tens are common, so 1e-3 on logits is two orders of magnitude of margin while an
  export bug (a wrong op, a wrong layout) moves logits by whole units.
- pt2: the same ops in PyTorch, traced; only batch norm folded into the convolutions differs from
  eager, the same rounding argument: 1e-3 on logits.
- int8: the activations are rounded to 256 levels, so logits move by tenths; what matters is the
  probability the pipeline thresholds (sigmoid for the U-Net, softmax for a classifier), and at a few
  voxels on a component's edge it may swing most of the way (a pixel on the 0.5 boundary). Bounded
  on the mean over all outputs (0.01) rather than the maximum, which is printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from noduleflow.detect.contract import sigmoid, softmax1
from noduleflow.errors import CheckpointError


class ExportError(CheckpointError):
    """An export that does not reproduce its eager model within its format's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """compared: "logits" or "probabilities"; max_abs / mean_abs: bounds on |export - eager| (None: not bounded)."""

    compared: str
    max_abs: float | None
    mean_abs: float | None

    def describe(self) -> str:
        bounds = [
            f"max abs <= {self.max_abs:g}" if self.max_abs is not None else "",
            f"mean abs <= {self.mean_abs:g}" if self.mean_abs is not None else "",
        ]
        return f"{' and '.join(filter(None, bounds))} on {self.compared}"


TOLERANCES = {
    "onnx": Tolerance("logits", max_abs=1e-3, mean_abs=None),
    "pt2": Tolerance("logits", max_abs=1e-3, mean_abs=None),
    "int8": Tolerance("probabilities", max_abs=None, mean_abs=0.01),
}
"""Per format, what an export must match (module docstring says why)."""


def parity(
    eager: Callable[[np.ndarray], np.ndarray],
    exported: Callable[[np.ndarray], np.ndarray],
    inputs: Iterable[np.ndarray],
    fmt: str,
    *,
    dense: bool,
) -> dict:
    """{"compared", "max_abs", "mean_abs", "tolerance", "ok"} of `exported` against `eager` (both numpy Nets) on
    `inputs`. dense: per-voxel logits (the U-Net, sigmoid) rather than per-sample two-class logits (softmax)."""
    tol = TOLERANCES[fmt]
    top, total, count = 0.0, 0.0, 0
    for x in inputs:
        a, b = eager(x), exported(x)
        if a.shape != b.shape:
            raise ExportError(
                f"{fmt} export gives outputs of shape {b.shape}, the eager model {a.shape}",
                fix="Report this as a bug of the export; detect with `--runtime torch` meanwhile.",
            )
        if tol.compared == "probabilities":
            a, b = (sigmoid(a), sigmoid(b)) if dense else (softmax1(a), softmax1(b))
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        top, total, count = max(top, float(diff.max(initial=0.0))), total + float(diff.sum()), count + diff.size
    mean = total / max(count, 1)
    ok = (tol.max_abs is None or top <= tol.max_abs) and (tol.mean_abs is None or mean <= tol.mean_abs)
    return {"compared": tol.compared, "max_abs": top, "mean_abs": mean, "tolerance": tol.describe(), "ok": bool(ok)}
