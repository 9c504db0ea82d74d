"""The Predictor on a small chest phantom, and the inputs it must survive: tiny, empty, lung-less scans, incomplete runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detect_phantom import CONTEXT, NODULE_IRC, NODULE_RADIUS_MM, DenseTissue, chest

from noduleflow.ct import CtVolume
from noduleflow.data.patches import crop, crop_mm, hu_to_unit
from noduleflow.detect import Predictor, load_detector
from noduleflow.detect.models import DetectorModels
from noduleflow.errors import CheckpointError


def _onnx_nets(models, tmp_path):
    """`models` exported to ONNX and run by onnxruntime: the Predictor's torch-free path."""
    from noduleflow.detect.contract import Nets
    from noduleflow.detect.runtime import OrtNet
    from noduleflow.export.formats import export_onnx

    contracts = models.contracts()
    segment = OrtNet(export_onnx(models.segment, torch.zeros(2, 7, 16, 16), tmp_path / "segment.onnx", multiple=4))
    size = contracts["classify"].patch_size
    classify = OrtNet(export_onnx(models.classify, torch.zeros(2, 1, *size), tmp_path / "classify.onnx"))
    return Nets(segment, classify, None, contracts, "onnx")


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_phantom_nodule_is_found_at_its_centre_with_its_size(models, runtime, tmp_path):
    volume = chest()
    nets = _onnx_nets(models, tmp_path) if runtime == "onnx" else models
    result = Predictor(nets, runtime="torch", blob_weight=0).predict(
        volume
    )  # the untrained stand-in classifier would call blobs at the lung's edge nodules (test_blobs)
    assert result.warnings == []
    assert len(result.findings) == 1  # the body wall is dense too, but lies outside the lung field
    finding = result.findings[0]
    np.testing.assert_allclose(finding.center_xyz, volume.irc_to_xyz(NODULE_IRC), atol=0.5)
    assert finding.diameter_mm == pytest.approx(2 * NODULE_RADIUS_MM, rel=0.1)
    assert (
        finding.segmentation == pytest.approx(1.0) and finding.malignancy is None
    )  # the stand-in's logit there: >= 20
    assert finding.probability == pytest.approx(finding.classifier * finding.segmentation)  # both models must agree
    if runtime == "onnx":
        eager = Predictor(models, runtime="torch", blob_weight=0).predict(volume).findings[0]
        assert finding.probability == pytest.approx(eager.probability, abs=1e-5)


def test_a_predictor_leaves_its_models_and_the_thread_count_as_given(models):
    """Constructing and running a Predictor folds batch norm into copies and sets threads only around its calls."""
    import copy

    from noduleflow.models.unet import segmentation_unet

    models.segment = segmentation_unet(4, 3, 3).eval()
    given = {part: copy.deepcopy(getattr(models, part).state_dict()) for part in ("segment", "classify")}
    before = given["classify"]
    threads = torch.get_num_threads()
    predictor = Predictor(models, runtime="torch", threads=max(1, threads - 1) if threads > 1 else 2)
    assert torch.get_num_threads() == threads
    predictor.predict(chest())
    assert torch.get_num_threads() == threads
    after = models.classify.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in models.classify.modules())  # not folded in place
    segment = models.segment.state_dict()
    assert all(
        torch.equal(given["segment"][k], segment[k]) and segment[k].is_contiguous() for k in segment
    )  # nor channels_last


class DeepDenseTissue(DenseTissue):
    """DenseTissue that, like a depth-4 UNet, refuses windows whose sizes do not divide by 8."""

    depth = 4

    def forward(self, x):
        assert x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0, f"window {tuple(x.shape[2:])} does not divide by 8"
        return super().forward(x)


@pytest.mark.parametrize("restrict_to_lung", [True, False])
def test_windows_fit_a_deeper_unet(models, restrict_to_lung):
    """A U-Net of depth 4 pools three times: every window the Predictor cuts must divide by 8, not the default 4."""
    models.segment = DeepDenseTissue()
    predictor = Predictor(models, runtime="torch", restrict_to_lung=restrict_to_lung)
    assert predictor.multiple == 8
    result = predictor.predict(chest())
    np.testing.assert_allclose(result.findings[0].center_irc, NODULE_IRC, atol=0.3)


def test_scan_smaller_than_the_classifier_patch_is_padded(models):
    """32 x 48 x 48 patches and U-Net windows reach past a 20 x 48 x 64 scan: they read air, nothing fails."""
    volume = chest()
    small = CtVolume(
        volume.hu[2:18, 2:46, 2:62].copy(), volume.origin_xyz, volume.spacing_xyz, volume.direction, "small"
    )
    result = Predictor(models, runtime="torch", blob_weight=0).predict(small)  # blob candidates: test_blobs
    assert len(result.findings) == 1
    np.testing.assert_allclose(result.findings[0].center_irc, np.subtract(NODULE_IRC, 2), atol=0.3)


def test_empty_volume_gives_no_findings_and_a_warning(models):
    air = CtVolume(np.full((8, 32, 32), -1000, np.int16), (0, 0, 0), (1, 1, 1), np.eye(3), series_uid="air")
    with pytest.warns(UserWarning, match="only air"):
        result = Predictor(models, runtime="torch").predict(air)
    assert result.findings == [] and "only air" in result.warnings[0]


def test_scan_without_lungs_gives_no_findings_and_a_warning(models):
    volume = chest()
    tissue = CtVolume(
        np.where(volume.hu > -900, 40, -1000).astype(np.int16),
        volume.origin_xyz,
        volume.spacing_xyz,
        volume.direction,
        series_uid="nolung",
    )
    with pytest.warns(UserWarning, match="no lung field"):
        result = Predictor(models, runtime="torch").predict(tissue)
    assert result.findings == [] and result.candidates == 0


def test_an_unknown_runtime_is_refused(models):
    with pytest.raises(ValueError, match="auto, int8, onnx, torch"):
        Predictor(models, runtime="tensorrt")


def test_exported_runtimes_without_an_export_name_the_export_command(models, tmp_path):
    models.run_dir = tmp_path
    for runtime in ("onnx", "int8"):
        with pytest.raises(CheckpointError, match=r"has no exported models.*noduleflow export"):
            Predictor(models, runtime=runtime)
    assert Predictor(models).runtime == "torch"  # auto, without exports
    models.run_dir = None
    with pytest.raises(ValueError, match="runtime 'torch'"):
        Predictor(models, runtime="onnx")


def test_run_folder_without_models_names_the_file_and_the_command(tmp_path):
    with pytest.raises(CheckpointError, match=r"segment/config.yaml.*noduleflow train detector"):
        load_detector(tmp_path)
    (tmp_path / "segment").mkdir()
    for name in ("config.yaml", "best.pt"):
        (tmp_path / "segment" / name).write_text("")
    with pytest.raises(CheckpointError, match=r"no classify/config.yaml.*noduleflow train classify"):
        load_detector(tmp_path)
    with pytest.raises(CheckpointError, match="not a detector run folder"):
        load_detector(tmp_path / "missing")


class Recorder(torch.nn.Module):
    """A patch classifier that keeps the patches it is shown and calls everything a nodule."""

    input_size = (8, 12, 12)

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x[:, 0].clone())
        return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)


@pytest.mark.parametrize("patch_mm", [None, (30.0, 36.0, 36.0)])
def test_classifier_sees_the_patch_it_was_trained_on(models, patch_mm):
    """Voxel patches at the nearest voxel, or (a run trained with data.patch_mm) patches resampled to those mm,
    cut exactly as the training datasets cut them (`crop` / `crop_mm`)."""
    volume, recorder = chest(), Recorder()
    models = DetectorModels(
        models.segment, recorder, None, None, patch_mm={} if patch_mm is None else {"classify": patch_mm}
    )
    finding = Predictor(models, runtime="torch").predict(volume).findings[0]
    center = np.array(finding.center_irc)
    expected = (
        crop(volume.hu, np.floor(center + 0.5).astype(np.int64), Recorder.input_size)
        if patch_mm is None
        else crop_mm(volume.hu, center, Recorder.input_size, patch_mm, volume.spacing_irc)
    )
    np.testing.assert_allclose(recorder.seen[0][0].numpy(), hu_to_unit(expected), atol=1e-6)


class LeftSided(Recorder):
    """Scores a patch by how much brighter its left half (W < W/2) is, so that a patch and its mirror score differently."""

    def forward(self, x):
        self.seen.append(x[:, 0].clone())
        half = x.shape[-1] // 2
        lean = x[..., :half].mean(dim=(1, 2, 3, 4)) - x[..., half:].mean(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(lean), 10 * lean], dim=1)


def test_mirror_averages_the_classifier_over_the_patch_and_its_mirror_image(models):
    volume = chest()
    off = Predictor(DetectorModels(models.segment, LeftSided(), None, None), runtime="torch", mirror=False)
    on_model = LeftSided()
    on = Predictor(DetectorModels(models.segment, on_model, None, None), runtime="torch")  # mirror is the default
    centers = np.array([NODULE_IRC, np.add(NODULE_IRC, (0, 3, -5))], dtype=np.float64)
    alone = off._probabilities("classify", volume, centers)
    both = on._probabilities("classify", volume, centers)
    patches, mirrored = on_model.seen[0][:2], on_model.seen[0][2:]
    torch.testing.assert_close(mirrored, patches.flip((1, 2, 3)))
    x = mirrored[:, None]
    flipped = torch.softmax(LeftSided().forward(x), 1)[:, 1].numpy()
    np.testing.assert_allclose(both, (alone + flipped) / 2, atol=1e-6)
    assert np.abs(alone - flipped).max() > 0.01  # the two halves really differ, so the mean is not trivial


def test_classify_patches_scores_cut_patches_as_predict_does(models):
    """The server's /v1/classify path: patches cut by the caller score as the Predictor's own cut does."""
    predictor = Predictor(models, runtime="torch")
    volume = chest()
    result = predictor.predict(volume)
    center = np.asarray(result.findings[0].center_irc)
    patch = crop(volume.hu, np.floor(center + 0.5).astype(int), predictor.patch_size())
    nodule, malignant = predictor.classify_patches(patch[None])
    assert nodule.shape == (1,) and malignant is None
    assert nodule[0] == pytest.approx(result.findings[0].classifier, abs=1e-6)


def test_candidate_mask_holds_the_scored_component(models):
    """The result keeps the voxels of the candidates it scored: the phantom nodule's, the size of its finding."""
    volume = chest()
    result = Predictor(models, runtime="torch").predict(volume)
    mask, finding = result.candidate_mask, result.findings[0]
    assert mask.shape == volume.shape and mask.dtype == bool
    assert mask[tuple(int(round(v)) for v in finding.center_irc)]
    voxel_mm3 = float(np.prod(volume.spacing_xyz))
    assert (6 * mask.sum() * voxel_mm3 / np.pi) ** (1 / 3) == pytest.approx(finding.diameter_mm, rel=1e-6)


class Brightness(Recorder):
    """Scores a patch by its centre voxel's density: the brighter blob is the likelier nodule."""

    def forward(self, x):
        self.seen.append(x[:, 0].clone())
        d, h, w = x.shape[2:]
        centre = x[:, 0, d // 2, h // 2, w // 2]
        return torch.stack([torch.zeros_like(centre), 10 * centre], dim=1)


def _blobs(hus=(30, 100, 200, 300, 400)) -> CtVolume:
    """The chest phantom without its nodule, with 4 mm dense blobs of rising HU, the brightest last in raster order."""
    volume = chest(nodule=False)
    hu = volume.hu.copy()
    for k, value in enumerate(hus):
        r, c = (14 + 5 * k, 18) if k < 4 else (24, 46)
        hu[9:12, r - 1 : r + 2, c - 1 : c + 2] = value
    return CtVolume(hu, volume.origin_xyz, volume.spacing_xyz, volume.direction, volume.series_uid)


def test_the_classifier_chooses_the_kept_findings_among_more_candidates(models):
    """rank_candidates are scored, the best max_candidates of them kept, and only those go to the malignancy model."""
    volume, malignancy = _blobs(), Recorder()

    def predictor(rank: int) -> Predictor:
        nets = DetectorModels(models.segment, Brightness(), malignancy, None)
        return Predictor(nets, runtime="torch", mirror=False, max_candidates=2, rank_candidates=rank, blob_weight=0)

    first = predictor(2).predict(volume)  # the segmentation saturates on every blob: its first two, by position
    malignancy.seen.clear()
    best = predictor(10).predict(volume)
    assert best.candidates == 5 and first.candidates == 2 and len(best.findings) == 2
    assert sum(len(batch) for batch in malignancy.seen) == 2  # malignancy scores the kept findings only
    hu_at = [volume.hu[tuple(int(round(v)) for v in f.center_irc)] for f in best.findings]
    assert sorted(hu_at) == [300, 400]
    assert sorted(volume.hu[tuple(int(round(v)) for v in f.center_irc)] for f in first.findings) == [30, 100]


class Graded(torch.nn.Module):
    """A segmentation stand-in that does not saturate: P rises with the density of the centre slice (0.73 at 0 HU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, CONTEXT : CONTEXT + 1] + 0.1) * 10


def test_a_nodule_fused_with_a_vessel_gets_a_candidate_of_its_own():
    """One component (a 10 mm nodule at the end of a 48 mm vessel) has its centre far outside the nodule; with
    inner_peaks the map's maximum inside the nodule becomes a candidate too."""
    from noduleflow.ct import lung_mask

    volume = chest(nodule=False)
    hu = volume.hu.copy()
    hu[9:12, 12:37, 17:20] = 0  # the vessel along R (2 mm pixels), 3 slices of 3 mm
    i, r, c = np.indices(hu.shape)
    nodule_irc = np.array([10, 14, 18])
    mm = np.sqrt(((i - 10) * 3.0) ** 2 + ((r - 14) * 2.0) ** 2 + ((c - 18) * 2.0) ** 2)
    ball = mm <= 5.0
    hu[ball] = 200 - 30 * mm[ball]  # densest at its centre, as partial volume makes a nodule's edge fainter
    volume = CtVolume(hu, volume.origin_xyz, volume.spacing_xyz, volume.direction, volume.series_uid)
    lung = lung_mask(volume)

    def distances(inner: bool) -> np.ndarray:
        nets = DetectorModels(Graded(), None, None, None)
        comps = Predictor(nets, runtime="torch", inner_peaks=inner).candidates(volume, lung)
        return np.linalg.norm((comps.centers_irc - nodule_irc) * volume.spacing_irc, axis=1)

    fused = distances(False)
    assert len(fused) == 1 and fused[0] > 10  # the fused blob's centre: mid-vessel
    assert distances(True).min() < 1.0  # a mark at the nodule's centre (LUNA16 counts a hit within its radius)


def test_segment_mirror_keeps_what_a_voxelwise_unet_finds(models):
    """DenseTissue marks each voxel by its own HU, so the mirrored pass gives the same map: the same finding."""
    from noduleflow.ct.lungmask import lung_mask

    volume = chest()
    lung = lung_mask(volume, step=2)
    plain = Predictor(models, runtime="torch", blob_weight=0)  # blob candidates: test_blobs
    mirrored = Predictor(models, runtime="torch", segment_mirror=True, blob_weight=0)
    probs = plain.segment(volume, lung)
    assert probs.max() > 0.5  # the phantom's nodule is marked
    np.testing.assert_allclose(mirrored.segment(volume, lung), probs, atol=1e-6)
    [a], [b] = plain.predict(volume).findings, mirrored.predict(volume).findings
    np.testing.assert_allclose(b.center_irc, a.center_irc, atol=1e-6)


def test_detect_and_the_server_default_to_the_predictor_s_threshold_and_blob_weight():
    """The CLI and the server settings cannot import the Predictor cheaply, so they repeat its number: kept equal."""
    import inspect

    from noduleflow.cli import detect, serve
    from noduleflow.detect.predictor import DEFAULT_BLOB_WEIGHT, DEFAULT_THRESHOLD, Predictor
    from noduleflow.serve.settings import ServeSettings

    assert inspect.signature(Predictor).parameters["threshold"].default == DEFAULT_THRESHOLD
    assert inspect.signature(detect).parameters["threshold"].default.default == DEFAULT_THRESHOLD
    assert ServeSettings.__dataclass_fields__["threshold"].default == DEFAULT_THRESHOLD
    assert inspect.signature(serve).parameters["threshold"].default.default == DEFAULT_THRESHOLD
    for command in (detect, serve):
        assert inspect.signature(command).parameters["blob_weight"].default.default == DEFAULT_BLOB_WEIGHT
    assert ServeSettings.__dataclass_fields__["blob_weight"].default == DEFAULT_BLOB_WEIGHT
