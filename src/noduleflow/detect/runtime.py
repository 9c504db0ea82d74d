"""The detector's models under ONNX Runtime, from what `noduleflow export` wrote: no torch in the process.

Why ONNX Runtime on a CPU: its graph optimiser fuses each convolution with its ReLU, so the U-Net
runs faster there than in eager PyTorch (channels_last, batch norm folded), and the int8 U-Net
(onnxruntime's static quantization, calibrated on lung windows of training scans) faster again
(docs/decisions.md, 2026-11-29).

Runtimes: "onnx" runs every model's float32 export; "int8" the U-Net's int8 export and the
classifiers' int8 exports where the manifest has them (else their float32 ones). Both load joint.onnx
where the manifest lists it: the classifier and malignancy in one pass (`detect.models.JointNet`). Each file is
checked against RUN/export/manifest.json first (`export.manifest.verified_file`), and the input
contracts come from the manifest too, so this module needs neither torch nor the training configs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noduleflow.detect.contract import JOINT, PARTS, InputContract, Nets
from noduleflow.detect.measure import MeasuredMalignancy
from noduleflow.errors import CheckpointError
from noduleflow.export.manifest import (
    EXPORT_DIR,
    MANIFEST_NAME,
    MEASURED_KEY,
    find_entry,
    read_manifest,
    verified_file,
)

EXPORTED = ("onnx", "int8")  # the runtimes served from RUN/export/


class OrtNet:
    """An exported model run by onnxruntime, as a `detect.contract.Net`: float32 batch in, float32 logits out.

    threads: intra-op threads of this session (0: onnxruntime's choice, one per physical core); nothing
    process-wide is set.
    """

    def __init__(self, path: str | Path, *, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers on the user's terminal
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidProtobuf / RuntimeException types
            raise CheckpointError(
                f"cannot be loaded by ONNX Runtime ({type(err).__name__})",
                path=path,
                fix="Re-export with `noduleflow export RUN`, or detect with `--runtime torch`.",
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def exported_runtime(run_dir: str | Path | None) -> str | None:
    """The best exported runtime of `run_dir` ("int8" when its U-Net has an int8 export, else "onnx"), or None
    when the run has no export (what the Predictor's runtime "auto" picks from)."""
    if run_dir is None:
        return None
    doc = read_manifest(run_dir)
    if doc is None or find_entry(doc, "segment", "onnx") is None and find_entry(doc, "segment", "int8") is None:
        return None
    return "int8" if find_entry(doc, "segment", "int8") else "onnx"


def load_exported(run_dir: str | Path, runtime: str, *, parts: tuple[str, ...] = PARTS, threads: int = 0) -> Nets:
    """`Nets` of the exports of `run_dir` for `runtime` ("onnx" or "int8"); `parts` limits which are loaded
    (("segment",) for mining). A missing export or a damaged file raises `CheckpointError` naming it and the fix."""
    if runtime not in EXPORTED:
        raise ValueError(f"runtime must be one of {', '.join(EXPORTED)}, got {runtime!r}")
    run_dir = Path(run_dir)
    doc = read_manifest(run_dir)
    if doc is None:
        raise CheckpointError(
            f"has no exported models ({EXPORT_DIR}/{MANIFEST_NAME})",
            path=run_dir,
            fix=f"Run `noduleflow export {run_dir}` first, or detect with `--runtime torch`.",
        )
    nets: dict[str, OrtNet | None] = dict.fromkeys(PARTS)
    contracts: dict[str, InputContract] = {}
    files: dict[str, str] = {}
    for part in parts:
        order = ("int8", "onnx") if runtime == "int8" and part != "segment" else (runtime,)
        entry = next((e for fmt in order if (e := find_entry(doc, part, fmt)) is not None), None)
        if entry is None:
            if part in ("segment", "classify"):
                raise CheckpointError(
                    f"has no {runtime} export of its {part} model",
                    path=run_dir / EXPORT_DIR / MANIFEST_NAME,
                    fix=f"Run `noduleflow export {run_dir} --format {runtime}`, or detect with `--runtime torch`.",
                )
            continue  # a detector without malignancy (or its export) reports none, as with --runtime torch
        path = verified_file(run_dir, entry)
        nets[part], contracts[part], files[part] = (
            OrtNet(path, threads=threads),
            InputContract.from_dict(entry["input"]),
            str(path),
        )
    joint = None
    entry = find_entry(doc, JOINT, "onnx") if nets["classify"] is not None and nets["malignancy"] is not None else None
    if entry is not None:  # float32 like the classifiers it joins, in both runtimes
        joint = OrtNet(verified_file(run_dir, entry), threads=threads)
        files[JOINT] = str(joint.path)
    measured = None
    if nets["malignancy"] is not None and doc.get(MEASURED_KEY) is not None:  # the fitted numbers, in the manifest
        try:
            measured = MeasuredMalignancy.from_dict(doc[MEASURED_KEY])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"has a damaged measured malignancy model ({err})",
                path=run_dir / EXPORT_DIR / MANIFEST_NAME,
                fix=f"Run `noduleflow export {run_dir}` again.",
            ) from None
    return Nets(
        nets["segment"], nets["classify"], nets["malignancy"], contracts, runtime, files, joint=joint, measured=measured
    )
