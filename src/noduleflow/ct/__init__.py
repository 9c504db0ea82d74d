"""CT volumes: the `CtVolume` type, readers and writers per file format, and world <-> voxel geometry."""

from noduleflow.ct.io import read_volume, write_volume
from noduleflow.ct.geometry import irc_to_xyz, xyz_to_irc, xyz_to_irc_float
from noduleflow.ct.volume import CtVolume

__all__ = ["CtVolume", "read_volume", "write_volume", "irc_to_xyz", "xyz_to_irc", "xyz_to_irc_float"]
