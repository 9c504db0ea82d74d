"""The measured malignancy model: sizes and densities read off patches of known nodules, a fit that learns, a file
that round-trips, and the Predictor, export and ONNX runtime that use it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from noduleflow.detect.measure import (
    FEATURES,
    MEASURED_NAME,
    PATCH_SIZE,
    MeasuredMalignancy,
    fit_measured,
    measured_diameter_mm,
    nodule_measures,
    patch_spacing,
    read_measured,
)
from noduleflow.errors import CheckpointError


def _patch(
    diameter_mm: float, hu: float = 40.0, *, noise: float = 20.0, wall_mm: float | None = None, core_hu=None, seed=0
):
    """A measured-patch-sized HU patch: lung (-850 HU) with a sphere of `diameter_mm` at its centre, optionally a
    chest wall (soft tissue) from `wall_mm` mm right of the centre on, and a calcified core of `core_hu`."""
    rng = np.random.default_rng(seed)
    spacing = np.array(patch_spacing())
    grid = (np.indices(PATCH_SIZE).T - (np.array(PATCH_SIZE) - 1) / 2).T * spacing[:, None, None, None]
    r = np.sqrt((grid**2).sum(0))
    patch = np.full(PATCH_SIZE, -850.0) + rng.normal(0, noise, PATCH_SIZE)
    patch[r <= diameter_mm / 2] = hu + rng.normal(0, noise, int((r <= diameter_mm / 2).sum()))
    if wall_mm is not None:
        patch[grid[2] >= wall_mm] = 40.0
    if core_hu is not None:
        patch[r <= 1.5] = core_hu
    return patch.astype(np.float32)


@pytest.mark.parametrize("diameter", [4.0, 6.0, 10.0, 16.0])
def test_a_nodule_s_diameter_is_measured_within_a_millimetre(diameter):
    measures = nodule_measures(np.stack([_patch(diameter), _patch(diameter, hu=-500.0, seed=1)]))
    np.testing.assert_allclose(measured_diameter_mm(measures), diameter, atol=1.0)  # solid and ground glass alike


def test_a_nodule_against_the_chest_wall_is_measured_along_its_free_rays():
    """The wall touches the nodule: its blob of dense voxels is the whole wall, but three quarters of the rays
    leave the nodule into lung, so the lower quartile of their lengths is its radius."""
    patch = _patch(8.0, wall_mm=4.0)
    assert measured_diameter_mm(nodule_measures(patch[None]))[0] == pytest.approx(8.0, abs=1.0)


def test_density_and_calcium_are_read_at_the_centre():
    solid, glass, calcified = nodule_measures(np.stack([_patch(8), _patch(8, hu=-500), _patch(8, core_hu=600.0)]))
    assert solid[1] == pytest.approx(0.04, abs=0.02) and glass[1] == pytest.approx(-0.5, abs=0.03)
    assert (solid[2], glass[2], calcified[2]) == (0.0, 0.0, 1.0)


def test_a_fitted_model_ranks_large_nodules_as_malignant_on_new_patches():
    """Labels drawn from size as the synthetic generator draws them (logistic in log-diameter, noisy): the model
    fitted on 60 nodules ranks 60 others by malignancy with ROC AUC above 0.8."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)

    def nodules(n, seed):
        diameters = np.exp(rng.normal(np.log(7.0), 0.5, n)).clip(3.5, 20)
        logit = 4.0 * np.log(diameters / 8.0) + rng.normal(0, 0.5, n)
        labels = rng.random(n) < 1 / (1 + np.exp(-logit))
        patches = np.stack([_patch(d, seed=seed + i) for i, d in enumerate(diameters)])
        return patches, labels

    train, labels = nodules(60, 0)
    model = fit_measured(nodule_measures(train), labels)
    assert model.coef[0] > 0 and (model.nodules, model.malignant) == (60, int(labels.sum()))
    assert model.diameter_factor == 1.0  # no annotated diameters: the measured ones as they are
    test, truth = nodules(60, 100)
    p = model(test)
    assert p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    assert roc_auc_score(truth, p) > 0.8


def test_fitting_needs_enough_nodules_of_both_labels():
    measures = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(ValueError, match="at least 10 labelled nodules of both kinds, got 12 \\(0 malignant\\)"):
        fit_measured(measures, [False] * 12)
    with pytest.raises(ValueError, match="got 4"):
        fit_measured(measures[:4], [True, False, True, False])
    model = fit_measured(np.c_[measures[:, :2], np.zeros(12)], [True, False] * 6)  # no calcified nodule: scale 1
    assert model.scale[2] == 1.0 and math.isfinite(model.coef[2])


def test_the_diameter_calibration_is_the_median_ratio_of_annotated_to_measured():
    diameters = np.array([4.0, 6.0, 8.0, 10.0, 12.0] * 2)
    measures = nodule_measures(np.stack([_patch(d, seed=i) for i, d in enumerate(diameters)]))
    measured = measured_diameter_mm(measures)
    labels = [False, True] * 5
    model = fit_measured(measures, labels, diameters_mm=1.2 * measured)  # annotations 20% larger than measured
    assert model.diameter_factor == pytest.approx(1.2)
    np.testing.assert_allclose(model.diameters_mm(measures), 1.2 * measured)
    unknown = fit_measured(measures, labels, diameters_mm=[float("nan")] * 10)
    assert unknown.diameter_factor == 1.0


def _model() -> MeasuredMalignancy:
    return MeasuredMalignancy((2.0, -0.1, 0.1), (0.35, 0.2, 0.3), (1.0, 0.2, -0.9), -1.6, 133, 31, 1.1)


def test_the_model_round_trips_through_its_file_and_damaged_files_name_themselves(tmp_path):
    path = tmp_path / MEASURED_NAME
    assert read_measured(path, fix="f") is None  # no file: no model
    path.write_text(json.dumps(_model().to_dict()))
    model = read_measured(path, fix="f")
    assert model == _model() and model.features == FEATURES
    patches = np.stack([_patch(5), _patch(14)])
    np.testing.assert_array_equal(model(patches), _model()(patches))
    for bad in (
        {**_model().to_dict(), "coef": [1.0, 2.0]},
        {**_model().to_dict(), "intercept": float("nan")},
        {**_model().to_dict(), "scale": [1.0, 0.0, 1.0]},
        {**_model().to_dict(), "features": ["diameter"]},
        {**_model().to_dict(), "diameter_factor": 40.0},
        {k: v for k, v in _model().to_dict().items() if k != "diameter_factor"},
        [1, 2, 3],
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="cannot read the measured malignancy model") as err:
            read_measured(path, fix="Delete it.")
        assert str(path) in str(err.value) and "Delete it." in str(err.value)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=MEASURED_NAME):
        read_measured(path, fix="f")


def test_absurd_numbers_give_finite_probabilities():
    """A served patch is untrusted: float32's largest numbers must not overflow into NaN."""
    huge = np.full((2, *PATCH_SIZE), np.finfo(np.float32).max, np.float32)
    huge[1] *= -1
    p = _model()(huge)
    assert np.isfinite(p).all() and np.isfinite(nodule_measures(huge)).all()


def test_an_empty_batch_scores_nothing():
    assert _model()(np.zeros((0, *PATCH_SIZE), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match="patches must be"):
        nodule_measures(np.zeros(PATCH_SIZE))
