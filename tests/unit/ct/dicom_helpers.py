"""Helpers the DICOM tests import by name: a small CT series written slice by slice with pydicom."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROW_MM, COL_MM, SLICE_MM = 0.75, 0.625, 2.5


def write_series(folder, stored, *, slopes, intercepts, direction, origin, series_uid=None, shuffle_seed=3, positions=None,
                  bits_stored=16, syntax=ExplicitVRLittleEndian, edit=None):
    """One 16-bit DICOM file per slice of `stored` (I, R, C), under shuffled file names and instance numbers;
    signed if `stored` is, keeping the low `bits_stored` bits.

    direction: (3, 3) columns = world directions of C, R and I. edit(k, ds), if given, changes slice k's
    data set before it is saved. Returns the files in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    n = len(stored)
    if positions is None:
        positions = [origin + k * SLICE_MM * direction[:, 2] for k in range(n)]
    names = np.random.default_rng(shuffle_seed).permutation(n)
    files = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = syntax
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series_uid
        ds.InstanceNumber = int(names[k]) + 1
        ds.Rows, ds.Columns = stored[k].shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        signed = stored.dtype.kind == "i"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in positions[k]]
        ds.PixelSpacing = [ROW_MM, COL_MM]
        ds.SliceThickness = SLICE_MM
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k], intercepts[k]
        ds.PixelData = (stored[k].astype("<i2" if signed else "<u2").view("<u2") & ((1 << bits_stored) - 1)).tobytes()
        if edit is not None:
            edit(k, ds)
        files.append(folder / f"IM{names[k]:04d}")
        ds.save_as(files[-1], enforce_file_format=True)
    return files
