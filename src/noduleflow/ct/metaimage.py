"""MetaImage files: `.mhd` header + `.raw` pixels (the LUNA16 layout), or one `.mha` holding both.

The header is parsed and checked here, before any pixel is read, so a bad file is reported with
the key or byte count at fault instead of a generic ITK exception. Pixels are then read in one
`np.fromfile` call (or one zlib decompression), which is as fast as the disk allows.

MetaImage's `TransformMatrix` lists the direction matrix column by column (the world direction of
the C axis first), which is how ITK reads and writes it; `Offset` is the world position of voxel
(0, 0, 0); `DimSize` and `ElementSpacing` are ordered X, Y, Z (C, R, I).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from noduleflow.ct.hu import to_hu_int16
from noduleflow.ct.volume import CtVolume
from noduleflow.errors import ScanError

ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
"""MetaIO element type -> numpy dtype (without byte order); MetaIO's LONG is 4 bytes."""

_MAX_HEADER_BYTES = 1 << 16
_REWRITE_FIX = "Re-export the scan, or fix the header by hand (see the keys in a LUNA16 .mhd file)"


def read_metaimage(path: str | Path) -> CtVolume:
    """Read a `.mhd` (+ its data file) or `.mha` into a `CtVolume` (int16 HU, (I, R, C)).

    The series uid is the file name without its suffix, as in LUNA16.
    """
    path = Path(path)
    fields, header_bytes = _read_header(path)
    meta = _parse_header(fields, path)
    hu = _read_pixels(meta, path, header_bytes)
    return CtVolume(hu, meta["origin"], meta["spacing"], meta["direction"], series_uid=path.stem)


def write_metaimage(volume: CtVolume, path: str | Path) -> Path:
    """Write a `CtVolume` as `.mhd` + `.raw` (next to it, same stem) or as one `.mha`, uncompressed.

    Floats are written with `repr`, the shortest text that reads back to the same float64, so
    origin, spacing and direction survive a round trip bit for bit. Returns the header's path.
    """
    path = Path(path)
    local = path.suffix.lower() == ".mha"
    data_name = "LOCAL" if local else path.with_suffix(".raw").name
    header = "\n".join([
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
    ]).encode("ascii")
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
            raise ScanError(f"is not a MetaImage header: line {line[:60]!r} is not 'Key = value'", path=path, fix=_REWRITE_FIX)
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
        except ValueError:
            values = []
        if len(values) != count or not np.all(np.isfinite(values)):
            raise ScanError(f"header key {key} = {text!r} is not {count} {kind.__name__} values", path=path, fix=_REWRITE_FIX)
        return np.asarray(values, dtype=np.float64 if kind is float else np.int64)

    def flag(key: str, default: str) -> bool:
        text = fields.get(key, default)
        if text.lower() not in ("true", "false", "1", "0"):
            raise ScanError(f"header key {key} = {text!r} is not True or False", path=path, fix=_REWRITE_FIX)
        return text.lower() in ("true", "1")

    if fields.get("ObjectType", "Image") != "Image":
        raise ScanError(f"holds a MetaIO {fields['ObjectType']!r} object, not an Image", path=path, fix="Pass an image file")
    ndims = int(numbers("NDims", get("NDims"), 1, int)[0])
    if ndims != 3:
        raise ScanError(f"is a {ndims}D image (NDims = {ndims}); a CT volume is 3D", path=path, fix="Pass a 3D scan")
    dims = numbers("DimSize", get("DimSize"), 3, int)
    spacing = numbers("ElementSpacing", get("ElementSpacing", "ElementSize"), 3, float)
    origin = numbers("Offset", get("Offset", "Origin", "Position", default="0 0 0"), 3, float)
    matrix = numbers("TransformMatrix", get("TransformMatrix", "Rotation", "Orientation", default="1 0 0 0 1 0 0 0 1"), 9, float)
    direction = matrix.reshape(3, 3).T  # MetaIO lists the matrix column by column
    if np.any(dims <= 0):
        raise ScanError(f"header key DimSize = {get('DimSize')!r} has a size below 1", path=path, fix=_REWRITE_FIX)
    if np.any(spacing <= 0):
        raise ScanError(f"header key ElementSpacing = {get('ElementSpacing', 'ElementSize')!r} is not positive millimetres", path=path, fix=_REWRITE_FIX)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise ScanError(f"header key TransformMatrix = {get('TransformMatrix', 'Rotation', 'Orientation')!r} is not invertible", path=path, fix=_REWRITE_FIX)
    element_type = get("ElementType")
    if element_type not in ELEMENT_TYPES:
        raise ScanError(f"header has an unknown ElementType {element_type!r}", path=path,
                        fix=f"Use one of {', '.join(ELEMENT_TYPES)} (CT scans are MET_SHORT)")
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels != "1":
        raise ScanError(f"has {channels} channels per voxel (ElementNumberOfChannels); a CT volume has 1", path=path, fix="Pass a single-channel scan")
    if not flag("BinaryData", "True"):
        raise ScanError("stores its pixels as text (BinaryData = False), which noduleflow does not read", path=path,
                        fix="Convert it to binary, e.g. with SimpleITK: sitk.WriteImage(sitk.ReadImage(p), 'scan.mha')")
    msb = flag("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False"))
    data_file = get("ElementDataFile")
    if data_file.split()[0] == "LIST" or "%" in data_file:
        raise ScanError(f"splits its pixels over several files (ElementDataFile = {data_file!r}), which noduleflow does not read", path=path,
                        fix="Merge them into one file, e.g. with SimpleITK: sitk.WriteImage(sitk.ReadImage(p), 'scan.mha')")
    return {
        "dims_xyz": dims, "spacing": spacing, "origin": origin, "direction": direction,
        "dtype": np.dtype(ELEMENT_TYPES[element_type]).newbyteorder(">" if msb else "<"),
        "element_type": element_type, "compressed": flag("CompressedData", "False"),
        "header_size": int(numbers("HeaderSize", fields.get("HeaderSize", "0"), 1, int)[0]),
        "data_file": data_file,
    }


def _read_pixels(meta: dict, path: Path, header_bytes: int) -> np.ndarray:
    """The (I, R, C) int16 HU array from the data file (or from after the header if LOCAL)."""
    local = meta["data_file"] == "LOCAL"
    data_path = path if local else path.parent / meta["data_file"]
    if not data_path.is_file():
        raise ScanError(f"names the data file {meta['data_file']!r} (ElementDataFile), which does not exist next to it", path=path,
                        fix=f"Put {data_path.name} in {data_path.parent}, or correct ElementDataFile")
    shape_irc = tuple(int(n) for n in meta["dims_xyz"][::-1])
    count = int(np.prod(meta["dims_xyz"]))
    expected = count * meta["dtype"].itemsize
    start = header_bytes if local else 0
    available = data_path.stat().st_size - start
    what = f"DimSize {' '.join(map(str, meta['dims_xyz']))} of {meta['element_type']} in {path.name}"
    if meta["compressed"]:
        with open(data_path, "rb") as f:
            f.seek(start + max(meta["header_size"], 0))
            try:
                data = zlib.decompress(f.read())
            except zlib.error as err:
                raise ScanError(f"holds compressed pixels that do not decompress ({err})", path=data_path,
                                fix="The file is damaged or truncated: copy or download it again") from None
        if len(data) != expected:
            raise ScanError(f"decompresses to {len(data)} bytes, but {what} needs {expected}", path=data_path,
                            fix="The pixels and the header do not belong together: copy or download the scan again")
        pixels = np.frombuffer(bytearray(data), dtype=meta["dtype"])  # bytearray: a writeable array
    else:
        # HeaderSize = -1 means "the pixels are the last bytes of the file"
        skip = max(available - expected, 0) if meta["header_size"] == -1 else meta["header_size"]
        if available - skip != expected:
            raise ScanError(f"holds {available - skip} bytes of pixels, but {what} needs {expected}", path=data_path,
                            fix="The file is truncated or belongs to another header: copy or download the scan again")
        pixels = np.fromfile(data_path, dtype=meta["dtype"], count=count, offset=start + skip)
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return to_hu_int16(pixels.reshape(shape_irc))
