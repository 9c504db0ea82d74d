"""Per-scan outputs read back by the tools people open them in: Slicer markups (json), the candidate mask
(nibabel and SimpleITK) and the DICOM SR (pydicom + highdicom), each placing the findings where the scan has them."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from noduleflow.ct import CtVolume, read_volume, write_volume
from noduleflow.detect.outputs import markups_document, scan_name, write_mask, write_scan_outputs
from noduleflow.detect.outputs.sr import write_sr
from noduleflow.detect.predictor import Finding, ScanResult


def _rotation(axis, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about `axis` (Rodrigues' formula)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


OBLIQUE = np.round(_rotation([0.3, -1.0, 0.5], 0.35), 6)  # 6 decimals: what DICOM's orientation keeps


def _volume(direction=OBLIQUE, shape=(8, 12, 10), uid="1.2.826.0.1.3680043.8.498.1") -> CtVolume:
    hu = np.random.default_rng(0).integers(-1000, 400, size=shape).astype(np.int16)
    return CtVolume(hu, [-150.5, 20.25, -300.0], [0.625, 0.75, 2.5], direction, series_uid=uid)


def _finding(volume: CtVolume, irc, p: float, malignancy: float | None, diameter: float) -> Finding:
    xyz = volume.irc_to_xyz(np.asarray(irc, dtype=np.float64))
    return Finding(tuple(map(float, xyz)), tuple(map(float, irc)), p, malignancy, diameter, 0.97, p / 0.97)


def _result(volume: CtVolume, findings: list[Finding], mask=None) -> ScanResult:
    result = ScanResult(volume.series_uid, findings, volume.shape)
    if mask is not None:
        result.candidate_mask = mask  # the field the inference refactor adds to ScanResult
    return result


def _sitk_image(volume: CtVolume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.hu)
    image.SetOrigin(volume.origin_xyz.tolist())
    image.SetSpacing(volume.spacing_xyz.tolist())
    image.SetDirection(volume.direction.ravel().tolist())
    return image


# ---------------------------------------------------------------- markups


def test_markups_hold_one_labelled_lps_point_per_finding_at_the_voxel_itk_places_there(tmp_path):
    volume = _volume()
    findings = [_finding(volume, (3, 4.5, 6), 0.931, 0.12, 6.14), _finding(volume, (5.25, 9, 2), 0.4, None, 3.0)]
    paths = write_scan_outputs(tmp_path, volume, _result(volume, findings), tmp_path / "scan.mha")
    assert paths == [tmp_path / "markups" / f"{volume.series_uid}.mrk.json"]
    doc = json.loads(paths[0].read_text())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = doc["markups"]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["F1 p=0.93 d=6.1mm m=0.12", "F2 p=0.40 d=3.0mm"]
    assert "P(malignant) 0.120" in points[0]["description"] and "malignant" not in points[1]["description"]
    image = _sitk_image(volume)
    for point, finding in zip(points, findings):
        np.testing.assert_allclose(point["position"], finding.center_xyz, atol=1e-9)
        # ITK (what Slicer reads LPS with) finds the finding's voxel at this position
        cri = image.TransformPhysicalPointToContinuousIndex(point["position"])
        np.testing.assert_allclose(cri[::-1], finding.center_irc, atol=1e-6)
    assert not list(tmp_path.glob("markups/.*"))  # no temporary file left behind


def test_markups_of_a_scan_without_findings_have_no_points():
    volume = _volume()
    assert markups_document(_result(volume, []))["markups"][0]["controlPoints"] == []


def test_output_names_are_the_series_uid_or_the_file_stem_made_safe(tmp_path):
    volume = _volume(uid="")
    assert scan_name(_result(volume, []), tmp_path / "case-7.nii.gz") == "case-7"
    assert scan_name(_result(volume, []), tmp_path / "case.8.mhd") == "case.8"
    hostile = scan_name(_result(_volume(uid="../../etc/passwd"), []), tmp_path / "x.mha")
    assert hostile.startswith("id-") and "/" not in hostile


# ---------------------------------------------------------------- mask


def _mask_at(volume: CtVolume, findings: list[Finding]) -> np.ndarray:
    mask = np.zeros(volume.shape, bool)
    for f in findings:
        i, r, c = np.floor(np.asarray(f.center_irc) + 0.5).astype(int)
        mask[i, r, c] = True
    mask[0, 0, 1] = True  # a voxel off every axis' origin, so a transposed or flipped read shows
    return mask


def _check_mask_file(path, volume: CtVolume, mask: np.ndarray, findings: list[Finding]) -> None:
    """nibabel and SimpleITK both read `mask` in `volume`'s geometry, with each finding's voxel set where it is."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)  # (C, R, I), NIfTI's (x, y, z)
    np.testing.assert_array_equal(data.T != 0, mask)
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # NIfTI world is RAS
    itk = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk) != 0, mask)
    np.testing.assert_allclose(itk.GetOrigin(), volume.origin_xyz, atol=1e-3)
    np.testing.assert_allclose(itk.GetSpacing(), volume.spacing_xyz, rtol=1e-5)
    np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), volume.direction, atol=1e-5)
    for f in findings:
        i, r, c = np.floor(np.asarray(f.center_irc) + 0.5).astype(int)
        assert data[c, r, i] == 1
        world = (lps_affine @ [c, r, i, 1.0])[:3]
        # within half a voxel of the finding's centre along each of the scan's axes
        assert np.all(np.abs(volume.xyz_to_irc(world, rounded=False) - f.center_irc) <= 0.5 + 1e-4)
        np.testing.assert_allclose(world, itk.TransformIndexToPhysicalPoint((int(c), int(r), int(i))), atol=1e-3)
        assert itk.TransformPhysicalPointToIndex(f.center_xyz) == (c, r, i)


def test_mask_is_written_in_the_scans_oblique_geometry(tmp_path):
    volume = _volume()
    findings = [_finding(volume, (3, 4, 6), 0.9, None, 5.0), _finding(volume, (6.4, 10.2, 1.6), 0.5, None, 3.0)]
    mask = _mask_at(volume, findings)
    scan = write_volume(volume, tmp_path / "scan.mha")
    paths = write_scan_outputs(tmp_path, volume, _result(volume, findings, mask), scan)
    path = tmp_path / "masks" / f"{volume.series_uid}.nii.gz"
    assert path in paths
    _check_mask_file(path, volume, mask, findings)
    # ITK places the mask exactly where it places the scan file itself
    on_disk, overlay = sitk.ReadImage(str(scan)), sitk.ReadImage(str(path))
    assert overlay.GetSize() == on_disk.GetSize()
    for a, b in [
        (overlay.GetOrigin(), on_disk.GetOrigin()),
        (overlay.GetSpacing(), on_disk.GetSpacing()),
        (overlay.GetDirection(), on_disk.GetDirection()),
    ]:
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the temporary file was renamed


def test_a_failed_mask_write_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    from noduleflow.detect.outputs import mask as mask_module

    volume = _volume()
    path = write_mask(volume, np.ones(volume.shape, bool), tmp_path / "m.nii.gz")
    before = path.read_bytes()

    def disk_full(image, target):
        Path(target).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(mask_module, "write_nifti", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_mask(volume, np.zeros(volume.shape, bool), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_no_mask_file_when_the_result_kept_none(tmp_path):
    volume = _volume()
    write_scan_outputs(tmp_path, volume, _result(volume, []), tmp_path / "scan.mhd")
    assert not (tmp_path / "masks").exists()


def test_a_mask_of_another_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_mask(_volume(), np.zeros((8, 12, 9), bool), tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    axis=st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda a: np.linalg.norm(a) > 0.1),
    angle=st.floats(-np.pi, np.pi),
    spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3),
    origin=st.tuples(*[st.floats(-400, 400)] * 3),
    voxel=st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 5)),
    flip=st.booleans(),
)
def test_mask_geometry_round_trips_for_any_placement(tmp_path, axis, angle, spacing, origin, voxel, flip):
    direction = _rotation(axis, angle) @ (np.diag([1.0, 1.0, -1.0]) if flip else np.eye(3))  # left-handed too
    volume = CtVolume(np.zeros((4, 5, 6), np.int16), origin, spacing, direction, series_uid="s")
    finding = _finding(volume, voxel, 0.5, None, 2.0)
    mask = _mask_at(volume, [finding])
    path = write_mask(volume, mask, tmp_path / "m.nii.gz")
    _check_mask_file(path, volume, mask, [finding])


# ---------------------------------------------------------------- DICOM SR

STUDY_UID, FRAME_UID, PATIENT_ID = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11", "phantom-7"


def _write_series(folder, volume: CtVolume, *, frame_of_reference: str | None = FRAME_UID) -> list[Dataset]:
    """`volume` as one uncompressed CT file per slice in `folder` (file names in reverse slice order)."""
    folder.mkdir(parents=True)
    headers = []
    for k, plane in enumerate(volume.hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", PATIENT_ID, "Phantom^Seven"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = STUDY_UID, volume.series_uid, k + 1
        if frame_of_reference:
            ds.FrameOfReferenceUID = frame_of_reference
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*volume.direction[:, 0], *volume.direction[:, 1])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in volume.irc_to_xyz([k, 0, 0])]
        ds.PixelSpacing = [float(volume.spacing_xyz[1]), float(volume.spacing_xyz[0])]  # (row, column) mm
        ds.SliceThickness = float(volume.spacing_xyz[2])
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = plane.astype("<i2").tobytes()
        ds.save_as(folder / f"IM{len(volume.hu) - k:04d}", enforce_file_format=True)
        headers.append(ds)
    return headers


@pytest.fixture
def dicom_scan(tmp_path):
    """(series folder, the volume read back from it, its slice datasets in slice order)."""
    headers = _write_series(tmp_path / "series", _volume())
    return tmp_path / "series", read_volume(tmp_path / "series"), headers


def _value(group, code) -> float:
    (measurement,) = group.get_measurements(name=code)
    return measurement.value


def test_sr_references_the_series_and_places_each_finding_in_its_frame_of_reference(tmp_path, dicom_scan):
    folder, volume, headers = dicom_scan
    findings = [_finding(volume, (2, 4.5, 6), 0.93, 0.12, 6.1), _finding(volume, (6.4, 9, 2), 0.41, 0.7, 3.25)]
    paths = write_scan_outputs(tmp_path / "out", volume, _result(volume, findings), folder)
    sr_path = tmp_path / "out" / "sr" / f"{volume.series_uid}.dcm"
    assert sr_path in paths
    sr = hd.sr.srread(sr_path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert (sr.StudyInstanceUID, sr.PatientID, str(sr.PatientName)) == (STUDY_UID, PATIENT_ID, "Phantom^Seven")
    assert sr.Modality == "SR"
    assert sr.SeriesInstanceUID != volume.series_uid
    assert sr.get_evidence_series() == [(STUDY_UID, volume.series_uid)]
    assert {uid for _, _, uid, _ in sr.get_evidence()} == {ds.SOPInstanceUID for ds in headers}  # every slice
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["F1", "F2"]
    for group, finding in zip(groups, findings):
        assert group.finding_type == codes.SCT.Nodule
        assert _value(group, codes.SCT.Diameter) == pytest.approx(finding.diameter_mm)
        assert _value(group, codes.DCM.CertaintyOfFinding) == pytest.approx(finding.probability)
        assert _value(group, codes.DCM.ProbabilityOfCancer) == pytest.approx(finding.malignancy)
        for measurement in group.get_measurements():
            (point,) = measurement.referenced_coordinates
            assert point.graphic_type == hd.sr.GraphicTypeValues3D.POINT
            assert point.frame_of_reference_uid == FRAME_UID
            np.testing.assert_allclose(point.value[0], finding.center_xyz, atol=1e-3)
        # the group's source image is the slice that holds the centre
        (source,) = group.source_images
        slice_index = int(np.floor(finding.center_irc[0] + 0.5))
        assert source.referenced_sop_instance_uid == headers[slice_index].SOPInstanceUID
    diameter = groups[0].get_measurements(name=codes.SCT.Diameter)[0]
    assert diameter.unit == codes.UCUM.Millimeter


def test_sr_without_a_malignancy_model_or_findings(tmp_path, dicom_scan):
    folder, volume, _ = dicom_scan
    written = write_sr(_result(volume, [_finding(volume, (1, 1, 1), 0.6, None, 4.0)]), folder, tmp_path / "a.dcm")
    (group,) = hd.sr.srread(written).content.get_image_measurement_groups()
    assert {m.name for m in group.get_measurements()} == {codes.SCT.Diameter, codes.DCM.CertaintyOfFinding}
    # TID 1500 needs a measurement group: no findings, no report (the empty markups say so)
    assert write_sr(_result(volume, []), folder, tmp_path / "b.dcm") is None
    assert not (tmp_path / "b.dcm").exists()


@pytest.mark.parametrize(
    "damage, logged",
    [
        ({"FrameOfReferenceUID": None}, "FrameOfReferenceUID"),
        ({"SOPClassUID": "1.2.3.4.5"}, "highdicom cannot build it"),
    ],
)
def test_no_sr_but_a_warning_for_a_series_a_report_cannot_reference(tmp_path, caplog, damage, logged):
    _write_series(tmp_path / "series", _volume())
    for f in (tmp_path / "series").iterdir():
        ds = pydicom.dcmread(f)
        for keyword, value in damage.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(f)
    volume = read_volume(tmp_path / "series")
    with caplog.at_level(logging.WARNING, logger="noduleflow"):
        result = _result(volume, [_finding(volume, (1, 1, 1), 0.6, None, 4.0)])
        paths = write_scan_outputs(tmp_path / "out", volume, result, tmp_path / "series")
    assert [p.parent.name for p in paths] == ["markups"]
    assert logged in caplog.text
    assert list((tmp_path / "out" / "sr").iterdir()) == []


# ---------------------------------------------------------------- through `detect`


def test_detect_writes_markups_and_sr_for_a_dicom_series(tmp_path, models, monkeypatch):
    from detect_phantom import NODULE_IRC, chest

    from noduleflow.detect import pipeline
    from noduleflow.detect.predictor import Predictor

    phantom = dataclasses.replace(chest(), series_uid="1.2.826.0.1.3680043.8.498.2")  # a valid DICOM UID
    _write_series(tmp_path / "series", phantom)
    stand_in = classmethod(lambda cls, run, **kw: Predictor(models, runtime="torch"))
    monkeypatch.setattr(pipeline.Predictor, "from_run", stand_in)
    summary = pipeline.detect(tmp_path / "series", "unused", tmp_path / "out", progress=False)
    (result,) = summary.results
    assert result.findings
    name = phantom.series_uid
    doc = json.loads((tmp_path / "out" / "markups" / f"{name}.mrk.json").read_text())
    point = doc["markups"][0]["controlPoints"][0]
    np.testing.assert_allclose(point["position"], phantom.irc_to_xyz(NODULE_IRC), atol=2.0)  # within a voxel
    sr = hd.sr.srread(tmp_path / "out" / "sr" / f"{name}.dcm")
    assert sr.get_evidence_series() == [(STUDY_UID, name)]
    first = sr.content.get_image_measurement_groups()[0].get_measurements()[0]
    np.testing.assert_allclose(first.referenced_coordinates[0].value[0], point["position"], atol=1e-3)
