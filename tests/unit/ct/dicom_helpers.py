"""Helpers the DICOM tests import by name: a small CT series written slice by slice with pydicom."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROW_MM, COL_MM, SLICE_MM = 0.75, 0.625, 2.5


def write_series(
    folder,
    stored,
    *,
    slopes,
    intercepts,
    direction,
    origin,
    series_uid=None,
    shuffle_seed=3,
    positions=None,
    bits_stored=16,
    syntax=ExplicitVRLittleEndian,
    edit=None,
):
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
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            bits_stored,
            bits_stored - 1,
            int(signed),
        )
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


def jpeg_lossless_encode(image: np.ndarray) -> bytes:
    """A 16-bit greyscale (R, C) image as a JPEG Lossless codestream, process 14, first-order prediction
    (what DICOM calls JPEG Lossless SV1, 1.2.840.10008.1.2.4.70, the most common lossless syntax in PACS).

    No encoder for it ships with pydicom or pylibjpeg, and this is small: one Huffman table whose 17
    categories all get 5-bit codes; the decoder under test (libjpeg) is independent of it.
    """
    image = np.asarray(image, dtype=np.uint16)
    rows, cols = image.shape
    pred = np.empty((rows, cols), dtype=np.int64)
    pred[0, 0] = 1 << 15
    pred[0, 1:] = image[0, :-1]  # first row: the left neighbour
    pred[1:, 0] = image[:-1, 0]  # first column: the sample above
    pred[1:, 1:] = image[1:, :-1]  # elsewhere: predictor 1, the left neighbour
    diffs = (image.astype(np.int64) - pred) & 0xFFFF
    bits, nbits = 0, 0
    for diff in diffs.ravel().tolist():
        diff = diff - 0x10000 if diff >= 0x8000 else diff
        category = 16 if diff == -0x8000 else abs(diff).bit_length()
        bits, nbits = (bits << 5) | category, nbits + 5  # code = the category itself, 5 bits
        if 0 < category < 16:
            extra = diff if diff > 0 else diff + (1 << category) - 1
            bits, nbits = (bits << category) | extra, nbits + category
    pad = -nbits % 8
    bits, nbits = (bits << pad) | ((1 << pad) - 1), nbits + pad  # pad with 1-bits
    scan = bits.to_bytes(nbits // 8, "big").replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    huffman = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    frame = bytes([16]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    start = bytes([1, 1, 0x00, 1, 0, 0x00])  # one component, table 0, predictor 1, Se 0, Ah/Al 0
    return b"\xff\xd8" + segment(0xC4, huffman) + segment(0xC3, frame) + segment(0xDA, start) + scan + b"\xff\xd9"
