"""`read_volume` / `write_volume`: round trips through every format, and the errors of the dispatch."""

import os
import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from noduleflow.ct import read_volume, write_volume
from noduleflow.errors import ScanError

# NIfTI keeps its affine in float32; MetaImage writes floats as shortest round-trip text
GEOMETRY_ATOL = {".mhd": 0.0, ".mha": 0.0, ".nii": 1e-4, ".nii.gz": 1e-4}


@pytest.mark.parametrize("suffix", list(GEOMETRY_ATOL))
def test_round_trip_keeps_array_and_geometry(tmp_path, oblique_volume, suffix):
    written = write_volume(oblique_volume, tmp_path / f"scan{suffix}")
    back = read_volume(written)
    np.testing.assert_array_equal(back.hu, oblique_volume.hu)
    assert back.hu.dtype == np.int16 and back.hu.flags.c_contiguous
    atol = GEOMETRY_ATOL[suffix]
    np.testing.assert_allclose(back.origin_xyz, oblique_volume.origin_xyz, rtol=0, atol=atol)
    np.testing.assert_allclose(back.spacing_xyz, oblique_volume.spacing_xyz, rtol=0, atol=atol)
    np.testing.assert_allclose(back.direction, oblique_volume.direction, rtol=0, atol=atol)
    assert back.series_uid == "scan"


@pytest.mark.parametrize("suffix", list(GEOMETRY_ATOL))
def test_simpleitk_reads_what_we_write(tmp_path, oblique_volume, suffix):
    image = sitk.ReadImage(str(write_volume(oblique_volume, tmp_path / f"scan{suffix}")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), oblique_volume.hu)
    atol = max(GEOMETRY_ATOL[suffix], 1e-12)
    np.testing.assert_allclose(image.GetOrigin(), oblique_volume.origin_xyz, atol=atol)
    np.testing.assert_allclose(image.GetSpacing(), oblique_volume.spacing_xyz, atol=atol)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), oblique_volume.direction, atol=atol)


def test_luna16_series_uid_with_dots_is_the_name_without_suffix(tmp_path, oblique_volume):
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    assert read_volume(write_volume(oblique_volume, tmp_path / f"{uid}.mhd")).series_uid == uid
    assert read_volume(write_volume(oblique_volume, tmp_path / f"{uid}.nii.gz")).series_uid == uid


def test_suffix_case_does_not_matter(tmp_path, oblique_volume):
    back = read_volume(write_volume(oblique_volume, tmp_path / "SCAN.MHA"))
    np.testing.assert_array_equal(back.hu, oblique_volume.hu)


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "scan.mhd"
    with pytest.raises(ScanError, match="does not exist") as err:
        read_volume(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["scan.png", "slice.dcm", "scan"])
def test_unknown_suffix_on_read(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ScanError, match="suffix") as err:
        read_volume(path)
    assert str(path) in str(err.value)
    assert "DICOM" in str(err.value)  # tells where a DICOM series goes


def test_unknown_suffix_on_write(tmp_path, oblique_volume):
    path = tmp_path / "scan.npy"
    with pytest.raises(ScanError, match="cannot write") as err:
        write_volume(oblique_volume, path)
    assert str(path) in str(err.value)
    assert not path.exists()


@pytest.mark.parametrize(
    "error",
    [
        OSError("disk on fire"),
        ValueError("x"),
        TypeError("y"),
        IndexError("z"),
        KeyError("k"),
        zlib.error("bad"),
        struct.error("short"),
        MemoryError(),
        OverflowError("big"),
        ZeroDivisionError("zero"),
        AttributeError("attr"),
        RuntimeError("plugin"),
    ],
)
def test_any_unexpected_reader_failure_becomes_a_scan_error_naming_the_file(
    tmp_path, oblique_volume, monkeypatch, error
):
    path = write_volume(oblique_volume, tmp_path / "scan.mha")

    def broken(_path):
        raise error

    monkeypatch.setattr("noduleflow.ct.metaimage.read_metaimage", broken)
    with pytest.raises(ScanError) as err:
        read_volume(path)
    assert str(path) in str(err.value) and err.value.__cause__ is error
    if isinstance(error, MemoryError):
        assert "more memory" in str(err.value)


def test_library_errors_become_scan_errors_but_programming_errors_do_not(tmp_path, oblique_volume, monkeypatch):
    from nibabel.spatialimages import HeaderDataError
    from pydicom.errors import InvalidDicomError

    path = write_volume(oblique_volume, tmp_path / "scan.nii")
    for error in (HeaderDataError("bad header"), InvalidDicomError("not dicom")):
        monkeypatch.setattr("noduleflow.ct.nifti.read_nifti", lambda _p, e=error: (_ for _ in ()).throw(e))
        with pytest.raises(ScanError, match="cannot be read as a CT scan"):
            read_volume(path)
    monkeypatch.setattr("noduleflow.ct.nifti.read_nifti", lambda _p: (_ for _ in ()).throw(NameError("a bug")))
    with pytest.raises(NameError):  # a bug in noduleflow itself stays a bug, not a complaint about the file
        read_volume(path)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii", ".nii.gz"])
def test_file_without_read_permission(tmp_path, oblique_volume, monkeypatch, suffix):
    """Simulated (the tests may run as root, who reads every file): open() refuses the scan file."""
    path = write_volume(oblique_volume, tmp_path / f"scan{suffix}")
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(ScanError, match="Permission denied") as err:
        read_volume(path)
    assert str(path) in str(err.value) and "permissions" in str(err.value)


@pytest.mark.parametrize("name", ["SCAN.MHD", "Scan.Nii.Gz", "scan.NII", "x.MHA"])
def test_find_scans_lists_every_suffix_read_volume_reads(tmp_path, oblique_volume, name):
    from noduleflow.data.luna16 import find_scans

    path = write_volume(oblique_volume, tmp_path / "subset0" / name)
    scans, folds = find_scans(tmp_path)
    uid = read_volume(path).series_uid
    assert scans == {uid: path} and folds == {uid: 0}
    assert uid == name.split(".")[0]


def test_a_pipe_named_like_a_scan_is_refused_without_blocking(tmp_path):
    path = tmp_path / "scan.mha"
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    with pytest.raises(ScanError, match="not a regular file"):
        read_volume(path)
