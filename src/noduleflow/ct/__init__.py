"""CT volumes: the `CtVolume` type, readers and writers per file format, world <-> voxel geometry,
resampling and lung masks."""

from noduleflow.ct.geometry import irc_to_xyz, xyz_to_irc, xyz_to_irc_float
from noduleflow.ct.hu import to_hu_int16
from noduleflow.ct.io import read_volume, write_volume
from noduleflow.ct.lungmask import lung_mask
from noduleflow.ct.resample import resample
from noduleflow.ct.volume import CtVolume

__all__ = [
    "CtVolume",
    "read_volume",
    "write_volume",
    "resample",
    "lung_mask",
    "to_hu_int16",
    "irc_to_xyz",
    "xyz_to_irc",
    "xyz_to_irc_float",
]
