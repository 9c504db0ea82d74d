"""Fixtures of the detection tests: stand-in models over the phantom of `detect_phantom`."""

from __future__ import annotations

import pytest
import torch
from detect_phantom import DenseTissue

from noduleflow.detect.models import DetectorModels
from noduleflow.models import create_model


@pytest.fixture
def models() -> DetectorModels:
    torch.manual_seed(0)
    classify = create_model("nodule_classifier", in_channels=1, num_classes=2, width=2, depth=4).eval()
    return DetectorModels(DenseTissue(), classify, None, run_dir=None)  # type: ignore[arg-type]
