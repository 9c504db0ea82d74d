"""DICOM series as PACS and strangers send them: overlay bits, lossless compression, files without a preamble,
malformed geometry tags (each a ScanError), and a property test over slice attributes."""

import io
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import SLICE_MM, jpeg_lossless_encode, write_series
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless, RLELossless

from noduleflow.ct import read_volume
from noduleflow.errors import ScanError

EYE = np.eye(3)
# pydicom's own warnings on the malformed tags and pixel data these tests write
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR"),
    pytest.mark.filterwarnings("ignore:The number of bytes of pixel data"),
]


@pytest.fixture
def stored():
    return np.random.default_rng(5).integers(0, 4000, size=(4, 6, 5)).astype(np.uint16)


def _series(folder, stored, **kwargs):
    kwargs.setdefault("slopes", [1] * len(stored))
    kwargs.setdefault("intercepts", [-1024] * len(stored))
    return write_series(folder, stored, direction=EYE, origin=np.array([-10.0, 20.0, 30.0]), **kwargs)


def _raises(path, *fragments):
    with pytest.raises(ScanError) as err:
        read_volume(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


# --- bits above BitsStored ---


def _ct_small_series(folder, edit) -> list:
    """Two slices of pydicom's real CT_small.dcm (a 128 x 128 CT slice), edited by `edit(ds)`."""
    folder.mkdir()
    files = []
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [float(v) + (0, 0, 5.0 * k)[i] for i, v in enumerate(ds.ImagePositionPatient)]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{k}"
        edit(ds)
        files.append(folder / f"s{k}.dcm")
        ds.save_as(files[-1])
    return files


@pytest.mark.parametrize("signed", [False, True])
def test_overlay_bits_above_bits_stored_are_masked_like_pydicom_and_itk(tmp_path, signed):
    """A 12-bit CT slice with an overlay in bit 15: the high bits are not part of the value."""

    def edit(ds):
        raw = np.frombuffer(ds.PixelData, "<u2") & 0x0FFF
        raw[::7] |= 0x8000  # overlay plane in the unused high bit
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.PixelData = raw.tobytes()

    files = _ct_small_series(tmp_path / "s", edit)
    reference = pydicom.dcmread(files[0])
    expected = reference.pixel_array * float(reference.RescaleSlope) + float(reference.RescaleIntercept)
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu[0], expected)
    assert volume.hu.max() < 4096 and (volume.hu.min() < -1000 if signed else True)
    itk = sitk.ReadImage([str(f) for f in files])
    np.testing.assert_array_equal(volume.hu, sitk.GetArrayFromImage(itk))


# --- lossless syntaxes ---


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLSLossless, RLELossless])
def test_lossless_compressed_series_read_like_uncompressed(tmp_path, stored, syntax):
    plain = read_volume(_series(tmp_path / "plain", stored, series_uid="1.2.3.4") and tmp_path / "plain")

    def compress(k, ds):
        if syntax == JPEGLosslessSV1:  # no encoder ships for it: our own, decoded by pylibjpeg-libjpeg
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = encapsulate([jpeg_lossless_encode(stored[k])])
        else:
            ds.compress(syntax, stored[k])

    _series(tmp_path / "packed", stored, series_uid="1.2.3.4", edit=compress)
    packed = read_volume(tmp_path / "packed")
    assert pydicom.dcmread(next((tmp_path / "packed").iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(packed.hu, plain.hu)
    np.testing.assert_array_equal(packed.hu, stored.astype(np.int16) - 1024)


def test_pydicom_jpeg_ls_and_jpeg_2000_mr_files_read_like_their_uncompressed_twin_and_warn(tmp_path, caplog):
    for name in ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        folder = tmp_path / name
        folder.mkdir()
        for k in range(2):
            ds = pydicom.dcmread(get_testdata_file(name))
            ds.ImagePositionPatient = [0.0, 0.0, 4.0 * k]
            ds.save_as(folder / f"{k}.dcm")
    with caplog.at_level("WARNING", logger="noduleflow"):
        plain = read_volume(tmp_path / "MR_small.dcm")
        jls, jp2k = (
            read_volume(tmp_path / "MR_small_jpeg_ls_lossless.dcm"),
            read_volume(tmp_path / "MR_small_jp2klossless.dcm"),
        )
    np.testing.assert_array_equal(jls.hu, plain.hu)
    np.testing.assert_array_equal(jp2k.hu, plain.hu)
    np.testing.assert_array_equal(plain.hu[0], pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)
    assert [r.getMessage().count("Modality is 'MR'") for r in caplog.records] == [1, 1, 1]  # once per scan


# --- files without the 128-byte preamble ---


def _strip(path, keep_meta: bool) -> None:
    if keep_meta:
        path.write_bytes(path.read_bytes()[132:])  # no preamble, no 'DICM', file meta kept
        return
    ds = pydicom.dcmread(path)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    del ds.file_meta
    write_dataset(out, ds)  # a bare implicit-VR data set, as old ACR-NEMA style exports write
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("keep_meta", [True, False])
def test_files_without_preamble_are_read(tmp_path, stored, keep_meta):
    files = _series(tmp_path / "s", stored)
    for f in files[::2]:
        _strip(f, keep_meta)
    assert any(f.read_bytes()[128:132] != b"DICM" for f in files)
    np.testing.assert_array_equal(read_volume(tmp_path / "s").hu, stored.astype(np.int16) - 1024)


def test_random_files_that_start_like_dicom_are_skipped_not_read(tmp_path, stored):
    folder = tmp_path / "s"
    _series(folder, stored)
    rng = np.random.default_rng(0)
    (folder / "junk1").write_bytes(b"\x08\x00\x05\x00" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (folder / "junk2").write_bytes(b"\x02\x00\x00\x00UL\x04\x00" + bytes(500))
    assert read_volume(folder).shape == (4, 6, 5)
    only_junk = tmp_path / "junk"
    only_junk.mkdir()
    for name in ("junk1", "junk2"):
        shutil.copy(folder / name, only_junk / name)
    _raises(only_junk, "no DICOM image file")


def test_truncated_dicom_file_is_an_error_not_a_missing_slice(tmp_path, stored):
    files = _series(tmp_path / "s", stored)
    files[-1].write_bytes(files[-1].read_bytes()[:400])  # the last slice: without it the volume would just be shorter
    _raises(tmp_path / "s", str(files[-1]))


# --- malformed tags: one ScanError each, naming the file and the tag ---


def _set(ds, keyword, value) -> None:
    """Set a tag to any value: text that pydicom would refuse for its VR goes in as raw bytes (VR UN), as a
    broken writer would leave it, and is read back under the tag's own VR."""
    try:
        with pydicom.config.disable_value_validation():
            setattr(ds, keyword, value)
    except (ValueError, TypeError, OverflowError):
        tag = Tag(tag_for_keyword(keyword))
        text = ("\\".join(map(str, value)) if isinstance(value, list) else str(value)).encode()
        text += b" " * (len(text) % 2)
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(text), text, 0, False, True)


@pytest.mark.parametrize(
    "tag, value, fragment",
    [
        ("ImageOrientationPatient", [0, 0, 0, 0, 0, 0], "not two perpendicular unit vectors"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "not two perpendicular unit vectors"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "not 6 numbers"),
        ("PixelSpacing", [0, 0], "PixelSpacing = [0.0, 0.0] mm, outside"),
        ("PixelSpacing", [0.7], "not 2 numbers"),
        ("PixelSpacing", ["1e-300", "1e-300"], "outside"),
        ("ImagePositionPatient", [1, 2], "not 3 numbers"),
        ("ImagePositionPatient", ["nan", 0, 0], "not 3 numbers"),
        ("NumberOfFrames", "abc", "NumberOfFrames"),
        ("NumberOfFrames", "2", "multi-frame"),
        ("SamplesPerPixel", 3, "samples per pixel"),
        ("RescaleSlope", "inf", "RescaleSlope"),
        ("Rows", 0, "rows"),
    ],
)
def test_malformed_tags(tmp_path, stored, tag, value, fragment):
    def edit(k, ds):
        if k == 1:
            _set(ds, tag, value)

    files = _series(tmp_path / "s", stored, edit=edit)
    message = _raises(tmp_path / "s", fragment)
    assert str(files[1]) in message or tag in message


def test_unreadable_file_is_a_scan_error(tmp_path, stored, monkeypatch):
    """A slice without read permission (simulated: the tests may run as root, who reads everything)."""
    files = _series(tmp_path / "s", stored)
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file) == str(files[2]):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    _raises(tmp_path / "s", str(files[2]), "Permission denied")


# --- property-based: any attribute of one slice set to anything ---

_ATTRIBUTES = {
    "ImageOrientationPatient": st.lists(
        st.sampled_from([0, 1, -1, 0.5, 1e-9, "nan", "x", 1e308]), min_size=0, max_size=7
    ),
    "ImagePositionPatient": st.lists(st.sampled_from([0, 2.5, -1e6, "inf", "", 1e308]), min_size=0, max_size=4),
    "PixelSpacing": st.lists(st.sampled_from([0, 0.7, -1, 1e-300, 1e300, "nan", "a"]), min_size=0, max_size=3),
    "Rows": st.integers(0, 9),
    "Columns": st.integers(0, 9),
    "BitsAllocated": st.sampled_from([1, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 40),
    "HighBit": st.integers(0, 40),
    "PixelRepresentation": st.integers(0, 3),
    "SamplesPerPixel": st.integers(0, 4),
    "RescaleSlope": st.sampled_from([0, 1, -1, 1e-30, 1e30, "nan", "inf", "x", ""]),
    "RescaleIntercept": st.sampled_from([0, -1024, 1e20, -1e20, "nan", "x"]),
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "x", "1e9", ""]),
    "Modality": st.sampled_from(["CT", "MR", "", "PT"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME2", "RGB", "PALETTE COLOR", ""]),
    "PixelData": st.sampled_from([b"", b"\x00\x00", bytes(58), bytes(62), bytes(120)]),
    "TransferSyntaxUID": st.sampled_from(
        ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5", "1.2.3.4.5.6"]
    ),
}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(_ATTRIBUTES)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: _ATTRIBUTES[k] for k in keys})
    ),
    which=st.integers(0, 2),
)
def test_any_slice_attribute_gives_a_volume_or_a_scan_error(tmp_path, changes, which):
    stored = np.random.default_rng(1).integers(0, 4000, size=(3, 6, 5)).astype(np.uint16)
    folder = tmp_path / f"s{abs(hash(repr(changes)))}_{which}"

    def edit(k, ds):
        if k != which:
            return
        for tag, value in changes.items():
            if tag == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            elif isinstance(value, list):
                _set(ds, tag, [str(v) for v in value] if value else None)
            else:
                _set(ds, tag, value)

    try:
        _series(folder, stored, edit=edit)
    except Exception:  # noqa: BLE001 - a value pydicom refuses to write is not a case to test
        assume(False)
    try:
        volume = read_volume(folder)
    except ScanError as err:
        assert str(folder) in str(err)
        event("ScanError")
        return
    event("read a volume" + (" (unchanged)" if not changes else ""))
    assert volume.hu.dtype == np.int16 and volume.shape[0] == 3
    assert np.all(np.isfinite(volume.origin_xyz)) and np.all(volume.spacing_xyz >= 0.01)
    if not changes:
        np.testing.assert_array_equal(volume.hu, stored.astype(np.int16) - 1024)
        assert volume.spacing_xyz[2] == pytest.approx(SLICE_MM)


def test_dataset_bytes_helper_round_trip():
    """The no-preamble writer used above produces what pydicom reads back with force=True."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    del ds.file_meta
    write_dataset(out, ds)
    back = pydicom.dcmread(io.BytesIO(out.getvalue()), force=True)
    assert back.Rows == 128 and "PixelData" in back
