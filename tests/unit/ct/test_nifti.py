"""NIfTI through nibabel: the same LPS world coordinates as SimpleITK, scaling, and bad files."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from ct_geometry_helpers import rotation

from noduleflow.ct import read_volume
from noduleflow.ct.nifti import read_nifti
from noduleflow.errors import ScanError


def _ras_affine(direction_ras, spacing, origin_ras) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction_ras * spacing
    affine[:3, 3] = origin_ras
    return affine


def _assert_same_world_as_itk(path):
    ours = read_nifti(path)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(ours.hu, sitk.GetArrayFromImage(itk))
    rng = np.random.default_rng(2)
    irc = rng.uniform(-1, 6, size=(100, 3))
    itk_xyz = [itk.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in irc]
    np.testing.assert_allclose(ours.irc_to_xyz(irc), itk_xyz, atol=1e-4)
    np.testing.assert_allclose(ours.origin_xyz, itk.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ours.direction.ravel(), itk.GetDirection(), atol=1e-5)


def test_simpleitk_written_oblique_file(tmp_path, oblique_volume):
    image = sitk.GetImageFromArray(oblique_volume.hu)
    image.SetOrigin(tuple(oblique_volume.origin_xyz))
    image.SetSpacing(tuple(oblique_volume.spacing_xyz))
    image.SetDirection(tuple(oblique_volume.direction.ravel()))
    path = tmp_path / "itk.nii.gz"
    sitk.WriteImage(image, str(path))
    _assert_same_world_as_itk(path)
    # and the LPS placement is the one we gave ITK, not the file's RAS one
    np.testing.assert_allclose(read_nifti(path).origin_xyz, oblique_volume.origin_xyz, atol=1e-4)


@pytest.mark.parametrize("qform_code, sform_code", [(1, 1), (1, 2), (2, 1), (0, 1), (1, 0), (2, 2), (0, 2), (0, 0)])
def test_nibabel_written_file_with_differing_qform_and_sform(tmp_path, qform_code, sform_code):
    """Two different affines in one file: we must pick the one ITK picks."""
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (x, y, z)
    qform = _ras_affine(rotation([0, 0, 1], 0.3), [0.7, 0.8, 2.0], [10, -20, 30])
    sform = _ras_affine(rotation([1, 1, 0], -0.2), [0.7, 0.8, 2.0], [-11, 21, -31])
    image = nib.Nifti1Image(data, None)
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    path = tmp_path / "two_affines.nii"
    nib.save(image, path)
    _assert_same_world_as_itk(path)
    # the array is stored (x, y, z) = (C, R, I)
    np.testing.assert_array_equal(read_nifti(path).hu, data.T)


def test_scaled_values_become_rounded_int16_hu(tmp_path):
    stored = np.array([0, 1000, 2047, 65535], dtype=np.uint16).reshape(2, 2, 1)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, path)
    hu = read_volume(path).hu
    assert hu.dtype == np.int16
    assert sorted(hu.ravel().tolist()) == [-1024, -524, 0, 31744]  # 2047 * 0.5 - 1024 = -0.5 rounds to even


def test_trailing_singleton_dimension_is_3d(tmp_path):
    path = tmp_path / "one_frame.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), np.eye(4)), path)
    assert read_volume(path).shape == (5, 4, 3)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5, 2)])
def test_not_3d(tmp_path, shape):
    path = tmp_path / "not3d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
    with pytest.raises(ScanError, match=f"{len(shape)}D image") as err:
        read_volume(path)
    assert str(path) in str(err.value)


def test_truncated_file(tmp_path, oblique_volume):
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.eye(4)), path)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:2000]))
    with pytest.raises(ScanError, match="holds 1648 bytes of voxels, but .* need 54000") as err:
        read_volume(path)
    assert str(path) in str(err.value)


def test_not_nifti(tmp_path):
    path = tmp_path / "text.nii"
    path.write_text("this is not an image\n" * 30)
    with pytest.raises(ScanError, match="not a readable NIfTI") as err:
        read_volume(path)
    assert str(path) in str(err.value)
