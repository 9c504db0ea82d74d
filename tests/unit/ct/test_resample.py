"""`resample`: new spacing, same place in the world (centre-aligned grid)."""

import numpy as np
import pytest

from noduleflow.ct import CtVolume, resample
from noduleflow.errors import ConfigError


def _sphere_volume(direction, spacing=(0.7, 0.8, 2.5), shape=(24, 70, 64), radius_mm=9.0):
    """A 100 HU ball in -1000 HU air, centred off the grid's centre; returns the volume and the ball's world centre."""
    volume = CtVolume(np.zeros(shape, np.int16), [-40.3, 12.7, -200.1], spacing, direction)
    centre_xyz = volume.irc_to_xyz([11.3, 36.6, 30.2])
    i, r, c = np.indices(shape).reshape(3, -1)
    xyz = volume.irc_to_xyz(np.stack([i, r, c], axis=1))
    inside = np.linalg.norm(xyz - centre_xyz, axis=1) <= radius_mm
    hu = np.where(inside, 100, -1000).astype(np.int16).reshape(shape)
    return CtVolume(hu, volume.origin_xyz, spacing, direction), centre_xyz


def _world_centroid(volume: CtVolume) -> np.ndarray:
    weights = (volume.hu.astype(np.float64) + 1000).ravel()
    irc = np.indices(volume.shape).reshape(3, -1).T
    return volume.irc_to_xyz((irc * weights[:, None]).sum(0) / weights.sum())


@pytest.mark.parametrize("target", [1.0, (1.5, 0.6, 1.2)])
def test_sphere_centre_stays_put_within_half_a_voxel(oblique_direction, target):
    volume, centre = _sphere_volume(oblique_direction)
    out = resample(volume, target)
    new_spacing = np.broadcast_to(target, (3,))
    np.testing.assert_array_equal(out.spacing_xyz, new_spacing)
    np.testing.assert_array_equal(out.direction, volume.direction)
    assert np.linalg.norm(_world_centroid(out) - centre) < 0.5 * new_spacing.min()
    # the ball is still a ball of the same volume (to within its voxelised surface)
    ball_ml = (out.hu > -450).sum() * np.prod(new_spacing) / 1000
    assert ball_ml == pytest.approx(4 / 3 * np.pi * 9.0**3 / 1000, rel=0.08)


def test_grid_centre_and_extent_are_kept(oblique_direction):
    volume, _ = _sphere_volume(oblique_direction)
    out = resample(volume, (1.0, 1.0, 1.0))
    centre = lambda v: v.irc_to_xyz((np.asarray(v.shape) - 1) / 2)  # noqa: E731 - a one-line centre of a volume
    np.testing.assert_allclose(centre(out), centre(volume), atol=1e-9)
    extent_irc = np.asarray(volume.shape) * volume.spacing_irc
    assert out.shape == tuple(np.round(extent_irc / 1.0).astype(int))  # (60, 56, 45)


def test_values_are_interpolated_not_invented():
    hu = np.array([[[-1000, 1000]]], dtype=np.int16).repeat(2, axis=0)
    volume = CtVolume(hu, [0, 0, 0], [2.0, 1.0, 1.0], np.eye(3))
    out = resample(volume, (0.5, 1.0, 1.0))  # 4 voxels per old voxel along C: samples at -0.375 .. 1.375
    np.testing.assert_array_equal(out.hu[0, 0], [-1000, -1000, -750, -250, 250, 750, 1000, 1000])
    nearest = resample(volume, (0.5, 1.0, 1.0), order=0)
    assert set(np.unique(nearest.hu)) == {-1000, 1000}
    cubic = resample(volume, (0.5, 1.0, 1.0), order=3)
    assert cubic.hu.dtype == np.int16 and cubic.shape == out.shape


def test_same_spacing_returns_the_volume(oblique_volume):
    assert resample(oblique_volume, oblique_volume.spacing_xyz) is oblique_volume


@pytest.mark.parametrize("spacing", [0.0, -1.0, (1.0, 2.0), (1.0, np.nan, 1.0)])
def test_bad_spacing(oblique_volume, spacing):
    with pytest.raises(ConfigError, match="spacing"):
        resample(oblique_volume, spacing)


@pytest.mark.parametrize("order", [-1, 6, 1.5])
def test_bad_order(oblique_volume, order):
    with pytest.raises(ConfigError, match="order"):
        resample(oblique_volume, 1.0, order=order)


@pytest.mark.parametrize("spacing", [0.001, (0.5, 0.5, 1e-300), 51.0, np.inf])
def test_spacing_outside_the_sane_range(oblique_volume, spacing):
    with pytest.raises(ConfigError, match="from 0.01 to 50.0"):
        resample(oblique_volume, spacing)


def test_output_beyond_max_voxels_is_refused_before_allocating():
    """300 mm cubed at 0.1 mm would be 2.7e10 voxels (54 GB of int16): refused at once, not a MemoryError."""
    volume = CtVolume(np.zeros((6, 6, 6), np.int16), [0, 0, 0], [50.0, 50.0, 50.0], np.eye(3), series_uid="big")
    message = r"resampling big .* would make 2\.7e\+10 voxels, more than the 1073741824"
    with pytest.raises(ConfigError, match=message) as err:
        resample(volume, 0.1)
    assert "coarser spacing" in str(err.value)
    assert resample(volume, 10.0).shape == (30, 30, 30)  # a legal output is still made


@pytest.mark.parametrize("text", ["0.001,0.001,0.001", "1,1,60", "nan,1,1", "1,1", "a,b,c", "inf,1,1"])
def test_spacing_flag_uses_the_same_range(text):
    from noduleflow.data.prepare_cache import parse_spacing

    with pytest.raises(ConfigError, match="from 0.01 to 50.0") as err:
        parse_spacing(text)
    assert text in str(err.value)
    assert parse_spacing("0.7,0.7,1.25") == (0.7, 0.7, 1.25) and parse_spacing("") is None
