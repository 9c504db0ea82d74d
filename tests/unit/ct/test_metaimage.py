"""MetaImage (.mhd/.raw, .mha): agreement with ITK's reading, other element types, and bad files."""

import numpy as np
import pytest
import SimpleITK as sitk

from noduleflow.ct import CtVolume, read_volume, write_volume
from noduleflow.ct.metaimage import read_metaimage
from noduleflow.errors import ScanError


def _sitk_image(volume: CtVolume, array=None) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.hu if array is None else array)
    image.SetOrigin(tuple(volume.origin_xyz))
    image.SetSpacing(tuple(volume.spacing_xyz))
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


@pytest.mark.parametrize("name, compress", [("itk.mhd", False), ("itk.mha", False), ("itk_zip.mha", True)])
def test_reads_itk_written_oblique_files_like_itk(tmp_path, oblique_volume, name, compress):
    path = tmp_path / name
    sitk.WriteImage(_sitk_image(oblique_volume), str(path), useCompression=compress)
    ours, itk = read_metaimage(path), sitk.ReadImage(str(path))
    np.testing.assert_array_equal(ours.hu, sitk.GetArrayFromImage(itk))
    assert ours.hu.flags.writeable
    np.testing.assert_array_equal(ours.origin_xyz, itk.GetOrigin())
    np.testing.assert_array_equal(ours.spacing_xyz, itk.GetSpacing())
    np.testing.assert_array_equal(ours.direction.ravel(), itk.GetDirection())
    # the same world point falls in the same voxel for both readers
    rng = np.random.default_rng(1)
    xyz = ours.irc_to_xyz(rng.uniform(0, 5, size=(200, 3)))
    itk_irc = [itk.TransformPhysicalPointToIndex(tuple(p))[::-1] for p in xyz]
    np.testing.assert_array_equal(ours.xyz_to_irc(xyz), itk_irc)


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.array([[[-1500.6, 0.4, 40000.0]]], dtype=np.float32), [-1501, 0, 32767]),
        (np.array([[[0, 1024, 65535]]], dtype=np.uint16), [0, 1024, 32767]),
        (np.array([[[-70000, -1024, 70000]]], dtype=np.int32), [-32768, -1024, 32767]),
    ],
)
def test_other_element_types_become_int16_hu(tmp_path, oblique_volume, values, expected):
    path = tmp_path / "typed.mhd"
    sitk.WriteImage(_sitk_image(oblique_volume, values), str(path))
    assert read_volume(path).hu.ravel().tolist() == expected


def test_big_endian_pixels_and_header_size(tmp_path):
    values = np.array([-1024, 0, 1, 3000, -1, 7], dtype=np.int16).reshape(1, 2, 3)
    (tmp_path / "be.raw").write_bytes(b"JUNKJUNK" + values.astype(">i2").tobytes())
    (tmp_path / "be.mhd").write_text(
        "NDims = 3\nDimSize = 3 2 1\nElementSpacing = 0.5 0.5 2\nBinaryDataByteOrderMSB = True\n"
        "HeaderSize = 8\nElementType = MET_SHORT\nElementDataFile = be.raw\n"
    )
    volume = read_volume(tmp_path / "be.mhd")
    np.testing.assert_array_equal(volume.hu, values)
    np.testing.assert_array_equal(volume.origin_xyz, [0, 0, 0])  # Offset and TransformMatrix default like ITK
    np.testing.assert_array_equal(volume.direction, np.eye(3))


def _write_header(tmp_path, oblique_volume, **changes) -> tuple:
    """A valid .mhd/.raw pair with some header keys replaced (value None drops the key)."""
    header = write_volume(oblique_volume, tmp_path / "scan.mhd")
    lines = []
    for line in header.read_text().splitlines():
        key = line.split(" = ")[0]
        if key not in changes:
            lines.append(line)
        elif changes[key] is not None:
            lines.append(f"{key} = {changes[key]}")
    header.write_text("\n".join(lines) + "\n")
    return header, tmp_path / "scan.raw"


def _raises(path, *fragments):
    with pytest.raises(ScanError) as err:
        read_volume(path)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_raw(tmp_path, oblique_volume):
    header, raw = _write_header(tmp_path, oblique_volume)
    raw.unlink()
    _raises(header, str(header), "scan.raw", "does not exist")


@pytest.mark.parametrize("cut", [2, -2])
def test_raw_size_does_not_match_header(tmp_path, oblique_volume, cut):
    header, raw = _write_header(tmp_path, oblique_volume)
    data = raw.read_bytes()
    raw.write_bytes(data[:-cut] if cut > 0 else data + b"\x00" * -cut)
    expected = oblique_volume.hu.size * 2
    _raises(header, str(raw), f"holds {expected - cut} bytes", f"needs {expected}", "DimSize 7 6 5", "scan.mhd")


def test_truncated_mha(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "scan.mha")
    path.write_bytes(path.read_bytes()[:-10])
    _raises(path, str(path), "bytes", "needs")


def test_unknown_element_type(tmp_path, oblique_volume):
    header, _ = _write_header(tmp_path, oblique_volume, ElementType="MET_FLOAT16")
    _raises(header, str(header), "unknown ElementType 'MET_FLOAT16'", "MET_SHORT")


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"DimSize": None}, "no DimSize key"),
        ({"ElementType": None}, "no ElementType key"),
        ({"ElementSpacing": None}, "no ElementSpacing key"),
        ({"ElementDataFile": None}, "no ElementDataFile key"),
        ({"DimSize": "7 6"}, "DimSize = '7 6' is not 3 int values"),
        ({"DimSize": "7 0 5"}, "size below 1"),
        ({"ElementSpacing": "0.7 abc 2.5"}, "ElementSpacing = '0.7 abc 2.5'"),
        ({"ElementSpacing": "0.7 -0.8 2.5"}, "not positive"),
        ({"Offset": "1 2 nan"}, "Offset"),
        ({"TransformMatrix": "1 0 0 0 1 0 0 0 0"}, "not invertible"),
        ({"NDims": "2"}, "2D image"),
        ({"BinaryData": "maybe"}, "BinaryData"),
        ({"BinaryData": "False"}, "as text"),
        ({"ElementDataFile": "LIST"}, "several files"),
    ],
)
def test_missing_or_malformed_header_keys(tmp_path, oblique_volume, changes, fragment):
    header, _ = _write_header(tmp_path, oblique_volume, **changes)
    _raises(header, str(header), fragment)


def test_not_a_header_at_all(tmp_path):
    path = tmp_path / "scan.mhd"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _raises(path, str(path), "not a MetaImage header")
