"""World mm (X, Y, Z) <-> voxel (I, R, C) for oblique direction matrices, checked against ITK."""

import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from noduleflow.ct import CtVolume, irc_to_xyz, xyz_to_irc, xyz_to_irc_float

finite = dict(allow_nan=False, allow_infinity=False)
quaternions = arrays(np.float64, 4, elements=st.floats(-1, 1, **finite)).filter(lambda q: np.linalg.norm(q) > 0.1)
reflections = st.sampled_from([1.0, -1.0])
spacings = arrays(np.float64, 3, elements=st.floats(0.2, 5.0, **finite))
origins = arrays(np.float64, 3, elements=st.floats(-500, 500, **finite))
irc_points = arrays(np.float64, (8, 3), elements=st.floats(-50, 600, **finite))


def _direction(q: np.ndarray, reflect: float) -> np.ndarray:
    """A rotation from a (not yet unit) quaternion, optionally with the C axis mirrored (det -1)."""
    w, x, y, z = q / np.linalg.norm(q)
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return rot @ np.diag([reflect, 1.0, 1.0])


@settings(max_examples=60, deadline=None)
@given(quaternions, reflections, spacings, origins, irc_points)
def test_oblique_round_trip_irc_xyz_irc(q, reflect, spacing, origin, irc):
    direction = _direction(q, reflect)
    xyz = irc_to_xyz(irc, origin, spacing, direction)
    np.testing.assert_allclose(xyz_to_irc_float(xyz, origin, spacing, direction), irc, atol=1e-7)
    # distances in the world are the voxel distances scaled by the spacing (a rigid placement)
    step = np.array([0.0, 0.0, 1.0])  # one voxel along C
    moved = irc_to_xyz(irc + step, origin, spacing, direction) - xyz
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), spacing[0], rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(quaternions, reflections, spacings, origins, irc_points)
def test_oblique_round_trip_xyz_irc_xyz(q, reflect, spacing, origin, irc):
    direction = _direction(q, reflect)
    xyz = origin + irc * 3.7  # arbitrary world points near the volume
    back = irc_to_xyz(xyz_to_irc_float(xyz, origin, spacing, direction), origin, spacing, direction)
    np.testing.assert_allclose(back, xyz, atol=1e-7)


def test_single_point_and_batch_agree(oblique_volume):
    irc = np.array([[1.0, 2.0, 3.0], [4.5, -1.0, 0.25]])
    batch = oblique_volume.irc_to_xyz(irc)
    assert batch.shape == (2, 3)
    np.testing.assert_array_equal(oblique_volume.irc_to_xyz(irc[1]), batch[1])


def test_xyz_to_irc_matches_itk_on_oblique_image(oblique_volume):
    image = sitk.GetImageFromArray(oblique_volume.hu)
    image.SetOrigin(tuple(oblique_volume.origin_xyz))
    image.SetSpacing(tuple(oblique_volume.spacing_xyz))
    image.SetDirection(tuple(oblique_volume.direction.ravel()))
    rng = np.random.default_rng(0)
    irc = rng.uniform(-3, 10, size=(2000, 3))
    xyz = oblique_volume.irc_to_xyz(irc)
    ours = xyz_to_irc(xyz, oblique_volume.origin_xyz, oblique_volume.spacing_xyz, oblique_volume.direction)
    itk = np.array([image.TransformPhysicalPointToIndex(tuple(p))[::-1] for p in xyz])
    np.testing.assert_array_equal(ours, itk)
    np.testing.assert_array_equal(oblique_volume.xyz_to_irc(xyz), itk)
    itk_float = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p))[::-1] for p in xyz])
    np.testing.assert_allclose(oblique_volume.xyz_to_irc(xyz, rounded=False), itk_float, atol=1e-9)
    itk_xyz = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in irc])
    np.testing.assert_allclose(xyz, itk_xyz, atol=1e-9)


def test_halves_round_up_like_itk():
    volume = CtVolume(np.zeros((2, 2, 2), np.int16), [0, 0, 0], [1, 1, 1], np.eye(3))
    np.testing.assert_array_equal(volume.xyz_to_irc([0.5, 1.5, -0.5]), [0, 2, 1])
