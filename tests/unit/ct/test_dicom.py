"""DICOM series folders through pydicom: slice order, rescale, geometry (checked against ITK/GDCM), and bad folders."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_geometry_helpers import rotation
from dicom_helpers import COL_MM, ROW_MM, SLICE_MM
from dicom_helpers import write_series as _write_series
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from noduleflow.ct import read_volume
from noduleflow.errors import ScanError


@pytest.fixture
def direction():
    """An oblique orientation whose cosines survive the 6 decimals DICOM keeps."""
    return np.round(rotation([0.3, -1.0, 0.5], 0.35), 6)


@pytest.fixture
def stored():
    return np.random.default_rng(5).integers(0, 4000, size=(6, 5, 4)).astype(np.uint16)


@pytest.mark.parametrize(
    "slopes, intercepts", [([1] * 6, [-1024] * 6), ([2, 2, 1, 1, 0.5, 0.5], [-1024, -1000, 0, -1024, -7.25, 3])]
)
def test_series_in_shuffled_files_reads_in_world_order(tmp_path, stored, direction, slopes, intercepts):
    origin = np.array([-150.5, 20.25, -300.0])
    files = _write_series(
        tmp_path / "series",
        stored,
        slopes=slopes,
        intercepts=intercepts,
        direction=direction,
        origin=origin,
        series_uid="1.2.840.99",
    )
    assert sorted(files) != files  # file names do not follow the slice order
    volume = read_volume(tmp_path / "series")
    expected = np.rint(stored * np.array(slopes, dtype=np.float64)[:, None, None] + np.array(intercepts)[:, None, None])
    np.testing.assert_array_equal(volume.hu, expected.astype(np.int16))
    assert volume.series_uid == "1.2.840.99"
    np.testing.assert_allclose(volume.spacing_xyz, [COL_MM, ROW_MM, SLICE_MM], atol=1e-3)
    np.testing.assert_allclose(volume.origin_xyz, origin, atol=1e-4)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-4)


def test_geometry_and_values_match_itk_series_reader(tmp_path, stored, direction):
    folder = tmp_path / "series"
    _write_series(
        folder, stored, slopes=[1] * 6, intercepts=[-1024] * 6, direction=direction, origin=np.array([1.0, 2.0, 3.0])
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    ours = read_volume(folder)
    np.testing.assert_array_equal(ours.hu, sitk.GetArrayFromImage(itk))
    np.testing.assert_allclose(ours.origin_xyz, itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.spacing_xyz, itk.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(ours.direction.ravel(), itk.GetDirection(), atol=1e-4)


def test_descending_positions_still_sort_along_the_normal(tmp_path, stored, direction):
    """Slices written from head to feet: the volume is the same, placed from the lowest position."""
    top = np.array([0.0, 0.0, 100.0])
    flipped = direction.copy()
    flipped[:, 2] *= -1  # slice step against the normal
    _write_series(tmp_path / "s", stored, slopes=[1] * 6, intercepts=[0] * 6, direction=flipped, origin=top)
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, stored[::-1].astype(np.int16))
    np.testing.assert_allclose(volume.origin_xyz, top + 5 * SLICE_MM * flipped[:, 2], atol=1e-4)
    np.testing.assert_allclose(volume.direction[:, 2], direction[:, 2], atol=1e-4)


def test_non_dicom_files_are_skipped(tmp_path, stored, direction):
    folder = tmp_path / "s"
    _write_series(folder, stored, slopes=[1] * 6, intercepts=[0] * 6, direction=direction, origin=np.zeros(3))
    (folder / "README.txt").write_text("notes about this scan\n")
    assert read_volume(folder).shape == (6, 5, 4)


def _raises(path, *fragments):
    with pytest.raises(ScanError) as err:
        read_volume(path)
    for fragment in (str(path), *fragments):
        assert fragment in str(err.value)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "empty folder")


def test_folder_without_dicom_files(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.bin").write_bytes(bytes(300))
    _raises(folder, "no DICOM image file")


def test_two_series_in_one_folder(tmp_path, stored, direction):
    folder = tmp_path / "mixed"
    _write_series(
        folder,
        stored[:3],
        slopes=[1] * 3,
        intercepts=[0] * 3,
        direction=direction,
        origin=np.zeros(3),
        series_uid="1.2.3.111",
    )
    files = _write_series(
        folder / "tmp",
        stored[3:],
        slopes=[1] * 3,
        intercepts=[0] * 3,
        direction=direction,
        origin=np.zeros(3),
        series_uid="1.2.3.222",
    )
    for f in files:
        f.rename(folder / f"B{f.name}")
    _raises(folder, "mixes 2 DICOM series", "1.2.3.111", "1.2.3.222")


def test_inconsistent_slice_sizes(tmp_path, stored, direction):
    folder = tmp_path / "sizes"
    _write_series(
        folder,
        stored[:3],
        slopes=[1] * 3,
        intercepts=[0] * 3,
        direction=direction,
        origin=np.zeros(3),
        series_uid="1.2.5",
    )
    other = np.zeros((3, 5, 6), np.uint16)
    shifted = [3 * SLICE_MM * direction[:, 2] + k * SLICE_MM * direction[:, 2] for k in range(3)]
    files = _write_series(
        folder / "tmp",
        other,
        slopes=[1] * 3,
        intercepts=[0] * 3,
        direction=direction,
        origin=np.zeros(3),
        series_uid="1.2.5",
        positions=shifted,
    )
    for f in files:
        f.rename(folder / f"B{f.name}")
    _raises(folder, "inconsistent slice sizes", "5x4", "5x6")


@pytest.mark.parametrize("drop, fragment", [(2, "unevenly spaced"), (None, "same position")])
def test_missing_or_repeated_slice(tmp_path, stored, direction, drop, fragment):
    positions = [k * SLICE_MM * direction[:, 2] for k in range(6)]
    if drop is None:
        positions[4] = positions[3]
    else:
        positions = [
            p + (SLICE_MM * direction[:, 2] if k >= drop else 0) for k, p in enumerate(positions)
        ]  # a gap after slice 1
    _write_series(
        tmp_path / "s",
        stored,
        slopes=[1] * 6,
        intercepts=[0] * 6,
        direction=direction,
        origin=np.zeros(3),
        positions=positions,
    )
    _raises(tmp_path / "s", fragment)


def test_single_slice(tmp_path, stored, direction):
    _write_series(tmp_path / "s", stored[:1], slopes=[1], intercepts=[0], direction=direction, origin=np.zeros(3))
    _raises(tmp_path / "s", "single slice")


def test_slice_without_position_tag(tmp_path, stored, direction):
    files = _write_series(
        tmp_path / "s", stored, slopes=[1] * 6, intercepts=[0] * 6, direction=direction, origin=np.zeros(3)
    )
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.raises(ScanError, match="ImagePositionPatient") as err:
        read_volume(tmp_path / "s")
    assert str(files[2]) in str(err.value)


@pytest.mark.parametrize("bits_stored, syntax", [(16, ImplicitVRLittleEndian), (12, ExplicitVRLittleEndian)])
def test_signed_pixels(tmp_path, direction, bits_stored, syntax):
    """Signed 16-bit pixels are read from the bytes; signed 12-bit ones need pydicom's sign extension."""
    stored = np.random.default_rng(4).integers(-2000, 2000, size=(3, 4, 5)).astype(np.int16)
    _write_series(
        tmp_path / "s",
        stored,
        slopes=[1] * 3,
        intercepts=[24] * 3,
        direction=direction,
        origin=np.zeros(3),
        bits_stored=bits_stored,
        syntax=syntax,
    )
    np.testing.assert_array_equal(read_volume(tmp_path / "s").hu, stored + 24)


def test_undecodable_pixel_data(tmp_path, stored, direction):
    files = _write_series(
        tmp_path / "s", stored, slopes=[1] * 6, intercepts=[0] * 6, direction=direction, origin=np.zeros(3)
    )
    ds = pydicom.dcmread(files[1])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51 not a real codestream"])
    ds.save_as(files[1])
    with pytest.raises(ScanError, match="cannot be decoded") as err:
        read_volume(tmp_path / "s")
    assert str(files[1]) in str(err.value)
