"""MetaImage files: `.mhd` header + `.raw` pixels (the LUNA16 layout), or one `.mha` holding both.

The header is parsed and checked here, before any pixel is read, so a bad file is reported with
the key or byte count at fault instead of a generic ITK exception. Pixels are then read in one
`np.fromfile` call (or one zlib decompression), which is as fast as the disk allows.

MetaImage's `TransformMatrix` lists the direction matrix column by column (the world direction of
the C axis first), which is how ITK reads and writes it; `Offset` is the world position of voxel
(0, 0, 0); `DimSize` and `ElementSpacing` are ordered X, Y, Z (C, R, I).
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from noduleflow.ct.hu import read_hu_slices, warn_if_not_ct
from noduleflow.ct.volume import CtVolume, check_voxel_count, checked_volume
from noduleflow.errors import ScanError

ELEMENT_TYPES = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "i2",
    "MET_USHORT": "u2",
    "MET_INT": "i4",
    "MET_UINT": "u4",
    "MET_LONG": "i4",
    "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}
"""MetaIO element type -> numpy dtype (without byte order); MetaIO's LONG is 4 bytes."""

_MAX_HEADER_BYTES = 1 << 16
_REFETCH_FIX = "The file is truncated or belongs to another header: copy or download the scan again"
_REWRITE_FIX = "Re-export the scan, or fix the header by hand (see the keys in a LUNA16 .mhd file)"


def read_metaimage(path: str | Path) -> CtVolume:
    """Read a `.mhd` (+ its data file) or `.mha` into a `CtVolume` (int16 HU, (I, R, C)).

    The series uid is the file name without its suffix, as in LUNA16.
    """
    path = Path(path)
    fields, header_bytes = _read_header(path)
    meta = _parse_header(fields, path)
    hu, clipped = _read_pixels(meta, path, header_bytes)
    volume = checked_volume(hu, meta["origin"], meta["spacing"], meta["direction"], path.stem, path=path)
    warn_if_not_ct(volume.hu, path, clipped=clipped)
    return volume


def write_metaimage(volume: CtVolume, path: str | Path) -> Path:
    """Write a `CtVolume` as `.mhd` + `.raw` (next to it, same stem) or as one `.mha`, uncompressed.

    Floats are written with `repr`, the shortest text that reads back to the same float64, so
    origin, spacing and direction survive a round trip bit for bit. Returns the header's path.
    """
    path = Path(path)
    local = path.suffix.lower() == ".mha"
    data_name = "LOCAL" if local else path.with_suffix(".raw").name
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            f"TransformMatrix = {_floats(volume.direction.T.ravel())}",
            f"Offset = {_floats(volume.origin_xyz)}",
            f"ElementSpacing = {_floats(volume.spacing_xyz)}",
            "DimSize = {} {} {}".format(*volume.shape[::-1]),
            "ElementType = MET_SHORT",
            f"ElementDataFile = {data_name}",
            "",
        ]
    ).encode("ascii")
    pixels = np.ascontiguousarray(volume.hu, dtype="<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header)
        if local:
            pixels.tofile(f)
    if not local:
        pixels.tofile(path.with_name(data_name))
    return path


def _floats(values: np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in values)


def _read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's `key = value` fields up to `ElementDataFile`, and the header's size in bytes."""
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    offset = 0
    for raw_line in head.splitlines(keepends=True):
        offset += len(raw_line)
        line = raw_line.decode("latin-1").strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ScanError(
                f"is not a MetaImage header: line {line[:60]!r} is not 'Key = value'", path=path, fix=_REWRITE_FIX
            )
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, offset
    raise ScanError("has no ElementDataFile key, so there are no pixels to read", path=path, fix=_REWRITE_FIX)


def _parse_header(fields: dict[str, str], path: Path) -> dict:
    """Checked geometry and data layout from the raw header fields (see module doc for orders)."""

    def get(*keys: str, default: str | None = None) -> str:
        for key in keys:
            if key in fields:
                return fields[key]
        if default is None:
            raise ScanError(f"header has no {keys[0]} key", path=path, fix=_REWRITE_FIX)
        return default

    def numbers(key: str, text: str, count: int, kind: type) -> np.ndarray:
        try:
            values = [kind(v) for v in text.split()]
        except (ValueError, OverflowError):
            values = []
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise ScanError(
                f"header key {key} = {text[:80]!r} is not {count} {kind.__name__} values", path=path, fix=_REWRITE_FIX
            )
        return values if kind is int else np.asarray(values, dtype=np.float64)  # ints stay Python ints: no overflow

    def flag(key: str, default: str) -> bool:
        text = fields.get(key, default)
        if text.lower() not in ("true", "false", "1", "0"):
            raise ScanError(f"header key {key} = {text!r} is not True or False", path=path, fix=_REWRITE_FIX)
        return text.lower() in ("true", "1")

    if fields.get("ObjectType", "Image") != "Image":
        raise ScanError(
            f"holds a MetaIO {fields['ObjectType']!r} object, not an Image", path=path, fix="Pass an image file"
        )
    ndims = numbers("NDims", get("NDims"), 1, int)[0]
    if ndims != 3:
        raise ScanError(f"is a {ndims}D image (NDims = {ndims}); a CT volume is 3D", path=path, fix="Pass a 3D scan")
    dims = numbers("DimSize", get("DimSize"), 3, int)
    spacing = numbers("ElementSpacing", get("ElementSpacing", "ElementSize"), 3, float)
    origin = numbers("Offset", get("Offset", "Origin", "Position", default="0 0 0"), 3, float)
    matrix = numbers(
        "TransformMatrix", get("TransformMatrix", "Rotation", "Orientation", default="1 0 0 0 1 0 0 0 1"), 9, float
    )
    direction = matrix.reshape(3, 3).T  # MetaIO lists the matrix column by column
    if any(n <= 0 for n in dims):
        raise ScanError(f"header key DimSize = {get('DimSize')!r} has a size below 1", path=path, fix=_REWRITE_FIX)
    check_voxel_count(dims, path=path, what="header key DimSize")
    if np.any(spacing <= 0):
        raise ScanError(
            f"header key ElementSpacing = {get('ElementSpacing', 'ElementSize')!r} is not positive millimetres",
            path=path,
            fix=_REWRITE_FIX,
        )
    if abs(np.linalg.det(direction)) < 1e-6:
        raise ScanError(
            f"header key TransformMatrix = {get('TransformMatrix', 'Rotation', 'Orientation')!r} is not invertible",
            path=path,
            fix=_REWRITE_FIX,
        )
    element_type = get("ElementType")
    if element_type not in ELEMENT_TYPES:
        raise ScanError(
            f"header has an unknown ElementType {element_type!r}",
            path=path,
            fix=f"Use one of {', '.join(ELEMENT_TYPES)} (CT scans are MET_SHORT)",
        )
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels != "1":
        raise ScanError(
            f"has {channels} channels per voxel (ElementNumberOfChannels); a CT volume has 1",
            path=path,
            fix="Pass a single-channel scan",
        )
    if not flag("BinaryData", "True"):
        raise ScanError(
            "stores its pixels as text (BinaryData = False), which noduleflow does not read",
            path=path,
            fix="Convert it to binary, e.g. with SimpleITK: sitk.WriteImage(sitk.ReadImage(p), 'scan.mha')",
        )
    msb = flag("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False"))
    data_file = get("ElementDataFile")
    if not data_file:
        raise ScanError(
            "header key ElementDataFile is empty, so there are no pixels to read",
            path=path,
            fix="Write the data file's name after 'ElementDataFile =' (LOCAL: pixels follow the header)",
        )
    if data_file.split()[0] == "LIST" or "%" in data_file:
        raise ScanError(
            f"splits its pixels over several files (ElementDataFile = {data_file!r}), which noduleflow does not read",
            path=path,
            fix="Merge them into one file, e.g. with SimpleITK: sitk.WriteImage(sitk.ReadImage(p), 'scan.mha')",
        )
    header_size = numbers("HeaderSize", fields.get("HeaderSize", "0"), 1, int)[0]
    if header_size < -1:
        raise ScanError(
            f"header key HeaderSize = {header_size} is negative (only -1, 'the pixels end the file', is allowed)",
            path=path,
            fix=_REWRITE_FIX,
        )
    return {
        "dims_xyz": dims,
        "spacing": spacing,
        "origin": origin,
        "direction": direction,
        "dtype": np.dtype(ELEMENT_TYPES[element_type]).newbyteorder(">" if msb else "<"),
        "element_type": element_type,
        "compressed": flag("CompressedData", "False"),
        "header_size": header_size,
        "data_file": data_file,
    }


def _data_path(meta: dict, path: Path) -> Path:
    """The data file ElementDataFile names, which must lie in the header's own folder.

    A header never chooses a file outside that folder: a name with '..', an absolute path, or a
    symlink that leads out of the folder is refused (the resolved paths are compared), so a server
    that reads uploaded headers cannot be made to return another file's bytes. Subfolders are allowed.
    """
    name = meta["data_file"]
    if name == "LOCAL":
        return path
    outside = ScanError(
        f"names the data file {name[:200]!r} (ElementDataFile), which is not a file in the header's own folder",
        path=path,
        fix="Move the data file next to the header and write its name, e.g. 'ElementDataFile = a.raw'",
    )
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or re.match(r"^[A-Za-z]:", name) or "\0" in name:
        raise outside
    folder = path.parent.resolve()
    data_path = (path.parent / name).resolve()
    if not data_path.is_relative_to(folder) or data_path == folder:
        raise outside
    if not data_path.is_file():
        raise ScanError(
            f"names the data file {name!r} (ElementDataFile), which does not exist next to it",
            path=path,
            fix=f"Put {data_path.name} in {data_path.parent}, or correct ElementDataFile",
        )
    return data_path


class _Inflater:
    """A read-only stream of the zlib (or gzip) data in a file, decompressing at most what is asked for.

    zlib.decompressobj with max_length: a few kilobytes of compressed zeros cannot expand to more
    than the header's size plus one byte, however large their true size, and no step holds more than
    `_STEP` bytes of output at once.
    """

    _STEP = 1 << 24

    def __init__(self, file, chunk: int = 1 << 20):
        self._file, self._chunk = file, chunk
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # | 32: zlib or gzip header, as MetaIO accepts

    def _pieces(self, size: int):
        """Decompressed pieces totalling at most `size` bytes (fewer if the stream ends)."""
        while size > 0 and not self._zlib.eof:
            data = self._zlib.unconsumed_tail or self._file.read(self._chunk)
            if not data:
                return
            piece = self._zlib.decompress(data, min(size, self._STEP))
            size -= len(piece)
            yield piece

    def read(self, size: int) -> bytes:
        return b"".join(self._pieces(size))

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        for piece in self._pieces(len(view)):
            view[done : done + len(piece)] = piece
            done += len(piece)
        return done


def _read_pixels(meta: dict, path: Path, header_bytes: int) -> tuple[np.ndarray, int]:
    """The (I, R, C) int16 HU array from the data file (or from after the header if LOCAL), and
    how many voxels were clipped to int16."""
    data_path = _data_path(meta, path)
    local = meta["data_file"] == "LOCAL"
    shape_irc = tuple(int(n) for n in meta["dims_xyz"][::-1])
    expected = math.prod(shape_irc) * meta["dtype"].itemsize
    start = header_bytes if local else 0
    available = data_path.stat().st_size - start
    what = f"DimSize {' '.join(map(str, meta['dims_xyz']))} of {meta['element_type']} in {path.name}"
    with open(data_path, "rb") as f:
        if meta["compressed"]:
            skip = max(meta["header_size"], 0)
            if skip > available:
                raise ScanError(f"is shorter than its HeaderSize = {skip} bytes", path=data_path, fix=_REFETCH_FIX)
            f.seek(start + skip)
            stream = _Inflater(f)
            try:
                hu, clipped, read = read_hu_slices(stream, meta["dtype"], shape_irc)
                extra = len(stream.read(1))
            except zlib.error as err:
                raise ScanError(
                    f"holds compressed pixels that do not decompress ({err})",
                    path=data_path,
                    fix="The file is damaged or truncated: copy or download it again",
                ) from None
            if read + extra != expected:
                size = f"{read} bytes" if read < expected else "more bytes"
                raise ScanError(
                    f"decompresses to {size}, but {what} needs {expected}",
                    path=data_path,
                    fix="The pixels and the header do not belong together: copy or download the scan again",
                )
            return hu, clipped
        # HeaderSize = -1 means "the pixels are the last bytes of the file"
        skip = max(available - expected, 0) if meta["header_size"] == -1 else meta["header_size"]
        if available - skip != expected:
            raise ScanError(
                f"holds {available - skip} bytes of pixels, but {what} needs {expected}",
                path=data_path,
                fix="The file is truncated or belongs to another header: copy or download the scan again",
            )
        f.seek(start + skip)
        hu, clipped, read = read_hu_slices(f, meta["dtype"], shape_irc)
    if read != expected:  # the file shrank while being read
        raise ScanError(
            f"holds {read} bytes of pixels, but {what} needs {expected}",
            path=data_path,
            fix="The file is truncated: copy or download the scan again",
        )
    return hu, clipped
