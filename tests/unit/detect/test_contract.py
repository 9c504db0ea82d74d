"""Input contracts: what each model takes, written to the export manifest and read back without torch."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.config import resolve_config, save_config
from noduleflow.data.patches import hu_to_unit
from noduleflow.detect.contract import InputContract, sigmoid, softmax1


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["segment", "patch"]),
    st.integers(0, 5),
    st.integers(1, 16),
    st.lists(st.integers(1, 64), min_size=3, max_size=3),
    st.lists(st.floats(1, 80), max_size=3).filter(lambda v: len(v) in (0, 3)),
)
def test_a_contract_survives_its_manifest_form(kind, context, multiple, size, mm):
    contract = InputContract(kind, context=context, multiple=multiple, patch_size=tuple(size), patch_mm=tuple(mm))
    assert InputContract.from_dict(contract.to_dict()) == contract


def test_the_default_window_is_the_training_pipelines_and_another_maps_its_ends_to_plus_minus_one():
    hu = np.array([-3000, -1000, -400, 0, 1000, 3000], np.int16)
    np.testing.assert_array_equal(InputContract("patch").to_unit(hu), hu_to_unit(hu))
    soft = InputContract("patch", hu_window=(-160.0, 240.0)).to_unit(hu)
    np.testing.assert_allclose(soft, [-1, -1, -1, -0.2, 1, 1], atol=1e-6)
    assert soft.dtype == np.float32


def test_probabilities_match_torchs():
    logits = np.random.default_rng(0).normal(0, 30, (50, 2)).astype(np.float32)
    np.testing.assert_allclose(softmax1(logits), torch.softmax(torch.from_numpy(logits), 1)[:, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(sigmoid(logits), torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6)


def test_the_unets_context_is_read_from_its_run(tmp_path):
    """segment.context is saved with the segment run: a 2-slice context builds and feeds a 5-channel U-Net."""
    from noduleflow.detect.models import load_segmentation
    from noduleflow.models.unet import segmentation_unet
    from noduleflow.train.checkpoint import save_checkpoint

    cfg = resolve_config(
        "segment", overrides={"data.root": "d", "segment.context": 2, "model.width": 4, "model.depth": 4}
    )
    (tmp_path / "segment").mkdir()
    save_config(cfg, tmp_path / "segment" / "config.yaml")
    save_checkpoint({"model": segmentation_unet(4, 4, 2).state_dict()}, tmp_path / "segment" / "best.pt")
    models = load_segmentation(tmp_path / "segment")
    contract = models.contracts()["segment"]
    assert (contract.context, contract.in_channels, contract.multiple) == (2, 5, 8)
    assert models.segment.down[0][0].in_channels == 5
