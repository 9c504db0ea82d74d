"""`CtVolume.from_array` and `CtVolume.from_sitk`: volumes a notebook user builds from memory, placed as the readers place them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from ct_geometry_helpers import rotation
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from noduleflow.ct import CtVolume, read_volume, write_volume
from noduleflow.ct.volume import MAX_VOXELS
from noduleflow.errors import ScanError

SPACING = (0.7, 0.8, 2.5)  # X, Y, Z mm: anisotropic, so an axis swap shows


def _air_and_tissue(shape=(4, 5, 6)) -> np.ndarray:
    """(I, R, C) float HU that looks like CT (air below -500 HU), so no 'not a CT' warning is logged."""
    hu = np.full(shape, 40.0)
    hu[0] = -1000.0
    return hu


def test_from_array_defaults_to_identity_at_the_origin_and_keeps_int16_without_a_copy():
    hu = _air_and_tissue().astype(np.int16)
    volume = CtVolume.from_array(hu, spacing_xyz=SPACING)
    assert volume.hu is hu and volume.series_uid == ""
    assert np.array_equal(volume.direction, np.eye(3)) and np.array_equal(volume.origin_xyz, [0, 0, 0])
    # voxel (I, R, C) = (2, 3, 4) lies at x = 4 * 0.7, y = 3 * 0.8, z = 2 * 2.5
    assert np.allclose(volume.irc_to_xyz([2, 3, 4]), [2.8, 2.4, 5.0])


def test_from_array_rounds_float_hu_to_nearest_even_nan_to_air_and_clips_to_int16():
    hu = _air_and_tissue()
    hu[1, 0, :6] = [0.5, 1.5, -2.5, np.nan, 1e6, -1e6]
    volume = CtVolume.from_array(hu, spacing_xyz=SPACING, series_uid="s1")
    assert volume.hu.dtype == np.int16 and volume.series_uid == "s1"
    assert volume.hu[1, 0, :6].tolist() == [0, 2, -2, -1024, 32767, -32768]
    assert volume.hu[2, 2, 2] == 40


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        (2, 3, 4),
        elements=st.floats(-1e5, 1e5, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 0.5, -1.5, 32767.5]),
    )
)
def test_from_array_float_rule_is_rint_then_clip(values):
    volume = CtVolume.from_array(values, spacing_xyz=SPACING)
    expected = np.clip(np.nan_to_num(np.rint(values.astype(np.float64)), nan=-1024), -32768, 32767)
    assert np.array_equal(volume.hu, expected.astype(np.int16))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float64])
def test_from_array_takes_other_dtypes_and_clips_out_of_range_integers(dtype):
    hu = np.zeros((2, 2, 2), dtype=dtype)
    hu[0, 0, 0] = 40000
    volume = CtVolume.from_array(hu, spacing_xyz=(1, 1, 1))
    assert volume.hu.dtype == np.int16 and volume.hu[0, 0, 0] == 32767 and volume.hu[1, 1, 1] == 0


def test_from_array_warns_once_for_values_that_are_not_hu(caplog):
    with caplog.at_level(logging.WARNING, logger="noduleflow"):
        CtVolume.from_array(np.random.default_rng(0).random((3, 8, 8)), spacing_xyz=SPACING)  # 0..1, normalised
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("CtVolume.from_array(hu): does not look like a CT scan")
    assert "no voxel is below -500 HU" in messages[0]


@pytest.mark.parametrize(
    ("hu", "kwargs", "words"),
    [
        (np.zeros((4, 4)), {}, "shape (4, 4)"),
        (np.zeros((0, 4, 4)), {}, "shape (0, 4, 4)"),
        (np.zeros((2, 2, 2), bool), {}, "bool"),
        (np.zeros((2, 2, 2), complex), {}, "integer or float"),
        (np.zeros((2, 2, 2)), {"spacing_xyz": (0.0007, 0.0007, 0.002)}, "voxel size"),  # metres, not mm
        (np.zeros((2, 2, 2)), {"spacing_xyz": (1, 1)}, "not 3 numbers"),
        (np.zeros((2, 2, 2)), {"origin_xyz": (0, np.inf, 0)}, "non-finite origin"),
        (np.zeros((2, 2, 2)), {"direction": np.diag([1.0, 1.0, 2.0])}, "not a rotation"),
        (np.zeros((2, 2, 2)), {"direction": "identity"}, "not 9 numbers"),
    ],
)
def test_from_array_refuses_what_a_reader_would_refuse_naming_the_call(hu, kwargs, words):
    with pytest.raises(ScanError) as err:
        CtVolume.from_array(hu, **{"spacing_xyz": SPACING, **kwargs})
    assert err.value.message.startswith("CtVolume.from_array(hu): ") and words in err.value.message
    assert err.value.fix


def test_from_array_refuses_more_voxels_than_noduleflow_reads():
    huge = np.broadcast_to(np.int16(0), (MAX_VOXELS // 4 + 1, 2, 2))  # no memory behind it
    with pytest.raises(ScanError, match="not a 3D"):
        CtVolume.from_array(huge, spacing_xyz=SPACING)


def _oblique_image(dtype=sitk.sitkInt16) -> sitk.Image:
    """(z, y, x) = (5, 6, 7) voxels, anisotropic spacing, rotated about a skew axis, non-round origin."""
    hu = np.random.default_rng(3).integers(-1024, 2000, size=(5, 6, 7)).astype(np.int16)
    image = sitk.Cast(sitk.GetImageFromArray(hu), dtype)
    image.SetSpacing(SPACING)
    image.SetOrigin((-123.25, 45.5, -300.125))
    image.SetDirection(rotation([1.0, 2.0, 3.0], 0.4).flatten().tolist())
    return image


def test_from_sitk_keeps_the_array_in_zyx_order_and_the_geometry():
    image = _oblique_image()
    volume = CtVolume.from_sitk(image)
    assert volume.shape == (5, 6, 7) and np.array_equal(volume.hu, sitk.GetArrayFromImage(image))
    assert np.allclose(volume.spacing_xyz, SPACING) and np.allclose(volume.origin_xyz, image.GetOrigin())
    assert np.allclose(volume.direction.flatten(), image.GetDirection()) and volume.series_uid == ""
    assert not np.shares_memory(volume.hu, sitk.GetArrayViewFromImage(image))  # its voxels outlive the image


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.49, 6.49), min_size=3, max_size=3))
def test_from_sitk_places_every_point_where_simpleitk_does(cri):
    """World <-> voxel agrees with SimpleITK's own transforms, both ways, on an oblique anisotropic image."""
    image = _oblique_image()
    volume = CtVolume.from_sitk(image)
    c, r, i = cri[0], cri[1] * 5 / 7, cri[2] * 4 / 7  # inside the (7, 6, 5) x, y, z index box
    assume(all(abs(v % 1 - 0.5) > 1e-6 for v in (c, r, i)))  # halfway between voxels, either rounding is right
    xyz = image.TransformContinuousIndexToPhysicalPoint((c, r, i))
    assert np.allclose(volume.irc_to_xyz([i, r, c]), xyz, atol=1e-9)
    assert np.allclose(volume.xyz_to_irc(xyz, rounded=False), [i, r, c], atol=1e-9)
    assert volume.xyz_to_irc(xyz)[::-1].tolist() == list(image.TransformPhysicalPointToIndex(xyz))


def test_from_sitk_converts_float_images_and_reads_the_dicom_series_uid():
    image = _oblique_image(sitk.sitkFloat32)
    image.SetMetaData("0020|000e", "1.2.840.99.1 ")  # DICOM pads UIDs to an even length
    volume = CtVolume.from_sitk(image)
    assert volume.series_uid == "1.2.840.99.1" and volume.hu.dtype == np.int16
    assert CtVolume.from_sitk(image, series_uid="mine").series_uid == "mine"


def test_from_sitk_agrees_with_read_volume_on_a_file_simpleitk_reads(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "scan.mhd")
    ours, theirs = read_volume(path), CtVolume.from_sitk(sitk.ReadImage(str(path)))
    assert np.array_equal(ours.hu, theirs.hu)
    for name in ("origin_xyz", "spacing_xyz", "direction"):
        assert np.allclose(getattr(ours, name), getattr(theirs, name), atol=1e-6), name


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (sitk.Image(4, 4, sitk.sitkInt16), "2D image"),
        (sitk.Image([3, 3, 3], sitk.sitkVectorFloat32, 3), "3 component(s)"),
    ],
)
def test_from_sitk_refuses_what_is_not_one_3d_scan(image, words):
    with pytest.raises(ScanError) as err:
        CtVolume.from_sitk(image)
    assert err.value.message.startswith("CtVolume.from_sitk(image): got a ") and words in err.value.message


def test_from_sitk_refuses_a_bad_geometry_naming_the_image():
    image = _oblique_image()
    image.SetSpacing((0.0007, 0.0008, 0.0025))  # metres
    with pytest.raises(ScanError, match=r"^CtVolume\.from_sitk\(image\): has a voxel size"):
        CtVolume.from_sitk(image)
