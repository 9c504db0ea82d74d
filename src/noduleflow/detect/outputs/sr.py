"""A DICOM SR measurement report (TID 1500, Comprehensive 3D SR, through highdicom) of one DICOM series.

One measurement group (TID 1501) per finding, tracked as "F1", "F2", ... in result order, with:
the finding type (SCT Nodule) and site (SCT Lung); three measurements (TID 300) each inferred from
the finding's centre as a SCOORD3D POINT in the source series' frame of reference (DICOM patient
coordinates are LPS millimetres, as `center_xyz` is): diameter (SCT Diameter, mm), score (DCM
Certainty of Finding, UCUM "1", 0-1) and, with a malignancy model, DCM Probability of cancer
(UCUM "1", 0-1); and the slice that holds the centre as the group's source image. Those slices form
the Image Library (TID 1600); every slice of the series is listed as evidence (Current Requested
Procedure Evidence), so the report references the series as a whole; the report copies the series'
patient and study attributes.

Cost: every slice header is read once (without pixels), and highdicom builds about 15 content
items per finding, so the report's time grows with the number of findings.

A series without StudyInstanceUID or FrameOfReferenceUID cannot be referenced that way, and
highdicom refuses some headers (an unknown SOP class, a malformed name): then no report is written
and a warning is logged (the markups and the mask still place the findings). Nor is one written
for a scan without findings: TID 1500 (and highdicom) need at least one measurement group, and the
scan's empty markups file already says that nothing was found.
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import noduleflow
from noduleflow.detect.predictor import Finding, ScanResult
from noduleflow.files import atomic_write

log = logging.getLogger("noduleflow")

SR_SERIES_NUMBER = 9001
"""Series number of the report series (high, so viewers list it after the scanner's series)."""
_PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
"""Type 2 attributes highdicom copies from the first evidence dataset; absent ones are set empty."""
_REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def series_headers(folder: str | Path) -> list[Dataset]:
    """The headers (no pixels) of the image slices in `folder`: files with a SOP instance and a position, any order."""
    headers = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError):
            continue
        if "SOPInstanceUID" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            headers.append(ds)
    return headers


def nearest_slices(headers: list[Dataset], xyz) -> list[Dataset]:
    """For each of the (N, 3) world points `xyz` (LPS mm), the slice whose plane lies nearest: the distance
    along each slice's own normal, so any orientation and any file order work."""
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])  # (S, 3)
    iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])  # (S, 6)
    normals = np.cross(iop[:, :3], iop[:, 3:])  # (S, 3)
    points = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    distance = np.abs(np.einsum("nsk,sk->ns", points[:, None, :] - positions[None], normals))  # (N, S)
    return [headers[k] for k in np.argmin(distance, axis=1)]


def write_sr(result: ScanResult, series_folder: str | Path, path: str | Path) -> Path | None:
    """Write the SR of `result` for the DICOM series in `series_folder` to `path` atomically; returns `path`,
    or None (logged) when there is nothing to report or the series cannot be referenced (module docstring)."""
    if not result.findings:
        log.info("no DICOM SR for %s: no findings to report", series_folder)
        return None
    import highdicom as hd  # slow to import: only runs over DICOM series pay for it

    headers = series_headers(series_folder)
    missing = [] if headers else ["image slices"]
    missing += [tag for tag in _REFERENCED_UIDS if headers and not headers[0].get(tag)]
    if missing:
        log.warning(
            "no DICOM SR for %s: the series lacks %s, which the report must reference",
            series_folder,
            ", ".join(missing),
        )
        return None
    try:
        sr = _report(hd, result, headers)
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # highdicom's refusals of unusual headers
        log.warning("no DICOM SR for %s: highdicom cannot build it from this series (%s)", series_folder, err)
        return None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return atomic_write(path, buffer.getvalue())


def _report(hd, result: ScanResult, headers: list[Dataset]):
    """The `highdicom.sr.Comprehensive3DSR` of `result` over the series' slice `headers` (module docstring)."""
    first = _with_empty_type2(headers[0])
    frame_of_reference = str(first.FrameOfReferenceUID)
    algorithm = hd.sr.AlgorithmIdentification(name="noduleflow", version=noduleflow.__version__)
    groups = []
    slices = nearest_slices(headers, [f.center_xyz for f in result.findings])
    for rank, (finding, slice_ds) in enumerate(zip(result.findings, slices), start=1):
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"F{rank}"),
                finding_type=pydicom.sr.codedict.codes.SCT.Nodule,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(pydicom.sr.codedict.codes.SCT.Lung)],
                measurements=_measurements(hd, finding, frame_of_reference),
                source_images=[hd.sr.SourceImageForMeasurementGroup(slice_ds.SOPClassUID, slice_ds.SOPInstanceUID)],
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_device_uid(), name="noduleflow", model_name=noduleflow.__version__
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=pydicom.sr.codedict.codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=groups,
        title=pydicom.sr.codedict.codes.DCM.ImagingMeasurementReport,
        referenced_images=list({ds.SOPInstanceUID: ds for ds in slices}.values()),
    )  # TID 1600 Image Library
    return hd.sr.Comprehensive3DSR(
        evidence=[first, *headers[1:]],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="noduleflow",
        is_complete=True,
        series_description="noduleflow nodule findings",
    )


def _measurements(hd, finding: Finding, frame_of_reference: str) -> list:
    """Diameter (mm), score and malignancy (UCUM "1") of one finding, each inferred from its centre point."""
    codes = pydicom.sr.codedict.codes
    values = [
        (codes.SCT.Diameter, finding.diameter_mm, codes.UCUM.Millimeter),
        (codes.DCM.CertaintyOfFinding, finding.probability, codes.UCUM.NoUnits),
    ]
    if finding.malignancy is not None:
        values.append((codes.DCM.ProbabilityOfCancer, finding.malignancy, codes.UCUM.NoUnits))
    point = np.asarray([finding.center_xyz], dtype=np.float64)  # (1, 3) LPS mm
    return [
        hd.sr.Measurement(
            name=name,
            value=float(value),
            unit=unit,
            referenced_coordinates=[
                hd.sr.CoordinatesForMeasurement3D(hd.sr.GraphicTypeValues3D.POINT, point, frame_of_reference)
            ],
        )
        for name, value, unit in values
    ]


def _with_empty_type2(header: Dataset) -> Dataset:
    """A copy of `header` with every patient/study attribute highdicom copies present (empty when absent)."""
    ds = copy.deepcopy(header)
    for keyword in _PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _device_uid() -> str:
    """A UID that names noduleflow as the observing device, the same in every report."""
    return pydicom.uid.generate_uid(entropy_srcs=["noduleflow", "detector"])
