"""The scan cache: each scan read once, stored as a memory-mapped int16 array plus its lung mask.

One entry per series, in `<cache>/<params>/<seriesuid>/`::

    hu.npy          (I, R, C) int16 HU, read back with np.load(mmap_mode="r"): a patch costs a page-cache copy
    lung_mask.npz   the lung mask's bounding box and its bits, packed and deflated (a few KB per scan)
    entry.json      geometry (origin, spacing, direction), sizes and checksums, the key; written last

`<params>` names the preprocessing (`v1-native`, or `v1-0.7x0.7x1.25mm` when resampled), so several
spacings can live side by side. An entry is complete only once `entry.json` exists, its key matches
the source file and its files have the recorded sizes: every file is written to a temporary name in
the same folder, fsynced and renamed, and `entry.json` goes last. A crash or a full disk leaves an
entry without `entry.json`, which the next `prepare` rebuilds. The key hashes the source files (relative
path, size, mtime and the first 4 KB, which hold an .mhd header) with the spacing and CACHE_VERSION.
The cache costs about what the int16 scans cost: the mask adds a few kilobytes, not a voxel's worth.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from noduleflow.ct import geometry
from noduleflow.ct.volume import CtVolume
from noduleflow.errors import CacheError

CACHE_VERSION = 1
DEFAULT_CACHE_NAME = ".noduleflow-cache"
ENTRY_JSON, HU_NPY, MASK_NPZ = "entry.json", "hu.npy", "lung_mask.npz"
_TMP = ".tmp-"


def params_tag(spacing_xyz: Sequence[float] | None) -> str:
    """The folder name of one set of preprocessing parameters, e.g. 'v1-native' or 'v1-0.7x0.7x1.25mm'."""
    if spacing_xyz is None:
        return f"v{CACHE_VERSION}-native"
    return f"v{CACHE_VERSION}-" + "x".join(f"{float(s):g}" for s in spacing_xyz) + "mm"


class LungMask:
    """A boolean lung mask over an (I, R, C) grid, held as packed bits of its bounding box.

    A 512x512x300 mask costs ~2 MB this way instead of 78 MB as bools, so a worker can keep the
    masks of many scans; `contains` tests voxels without unpacking the box.
    """

    def __init__(self, shape: Sequence[int], lo: Sequence[int], packed: np.ndarray, width: int):
        self.shape = tuple(int(s) for s in shape)
        self.lo = np.asarray(lo, dtype=np.int64).reshape(3)       # first voxel (I, R, C) of the box
        self.packed = np.asarray(packed, dtype=np.uint8)          # (Ib, Rb, ceil(Cb / 8)), bits along C
        self.box_shape = np.array([*self.packed.shape[:2], width], dtype=np.int64)  # (Ib, Rb, Cb)

    @classmethod
    def from_array(cls, mask: np.ndarray) -> "LungMask":
        """(I, R, C) bool -> packed form (an empty mask keeps an empty box)."""
        mask = np.asarray(mask, dtype=bool)
        nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        if any(n.size == 0 for n in nz):
            return cls(mask.shape, (0, 0, 0), np.zeros((0, 0, 0), np.uint8), 0)
        lo, hi = np.array([n[0] for n in nz]), np.array([n[-1] + 1 for n in nz])
        box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return cls(mask.shape, lo, np.packbits(box, axis=-1), int(hi[2] - lo[2]))

    @property
    def empty(self) -> bool:
        return self.box_shape.prod() == 0

    def to_array(self) -> np.ndarray:
        """The full (I, R, C) bool mask."""
        out = np.zeros(self.shape, dtype=bool)
        if not self.empty:
            (i, r, c), (di, dr, dc) = self.lo, self.box_shape
            out[i:i + di, r:r + dr, c:c + dc] = np.unpackbits(self.packed, axis=-1, count=int(dc)).astype(bool)
        return out

    def contains(self, irc: np.ndarray) -> np.ndarray:
        """(N, 3) int voxel indices -> (N,) bool: inside the lungs."""
        rel = np.asarray(irc, dtype=np.int64).reshape(-1, 3) - self.lo
        inside = np.all((rel >= 0) & (rel < self.box_shape), axis=1)
        out = np.zeros(len(rel), dtype=bool)
        i, r, c = rel[inside].T
        out[inside] = (self.packed[i, r, c >> 3] >> (7 - (c & 7))) & 1 == 1
        return out


@dataclass(frozen=True)
class CachedScan:
    """One cache entry opened for reading.

    hu: (I, R, C) int16, a read-only view of the file mapped with np.load(mmap_mode="r"); slicing it
        reads only the touched pages (`hu.base` is the np.memmap).
    Geometry fields as in `CtVolume` (origin_xyz, spacing_xyz in X, Y, Z mm; direction (3, 3)).
    """

    series_uid: str
    path: Path
    hu: np.ndarray
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def xyz_to_irc(self, xyz, *, rounded: bool = True) -> np.ndarray:
        """World mm (X, Y, Z), (3,) or (N, 3) -> voxel (I, R, C): nearest int64 or float."""
        fn = geometry.xyz_to_irc if rounded else geometry.xyz_to_irc_float
        return fn(xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc_to_xyz(self, irc) -> np.ndarray:
        """Voxel (I, R, C), (3,) or (N, 3) -> world mm (X, Y, Z)."""
        return geometry.irc_to_xyz(irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def lung_mask(self) -> LungMask:
        """The lung mask (loaded from disk on each call; callers keep the few they need)."""
        with np.load(self.path / MASK_NPZ) as z:
            return LungMask(self.shape, z["lo"], z["packed"], int(z["width"]))

    def volume(self) -> CtVolume:
        """A `CtVolume` over the memmap (no copy)."""
        return CtVolume(self.hu, self.origin_xyz, self.spacing_xyz, self.direction, self.series_uid)


class ScanCache:
    """The entries of one cache folder for one set of parameters (`root/params_tag(spacing)`)."""

    def __init__(self, root: str | Path, *, spacing_xyz: Sequence[float] | None = None):
        self.root = Path(root)
        self.spacing_xyz = None if spacing_xyz is None else tuple(float(s) for s in spacing_xyz)
        self.dir = self.root / params_tag(self.spacing_xyz)

    def __repr__(self) -> str:
        return f"ScanCache({str(self.root)!r}, spacing_xyz={self.spacing_xyz})"

    def entry_dir(self, series_uid: str) -> Path:
        return self.dir / series_uid

    def series_uids(self) -> tuple[str, ...]:
        """Series with an entry.json (complete as far as a directory listing can tell), sorted."""
        if not self.dir.is_dir():
            return ()
        return tuple(sorted(p.name for p in self.dir.iterdir() if (p / ENTRY_JSON).is_file()))

    def problem(self, series_uid: str, key: str | None = None, *, verify: bool = False) -> str | None:
        """Why the entry is unusable ('missing', 'stale', 'corrupt: ...'), or None if it is complete.

        Checks the manifest, the key (when given) and every file's size; `verify` also re-hashes
        the files, which reads them in full.
        """
        entry = self.entry_dir(series_uid)
        try:
            manifest = json.loads((entry / ENTRY_JSON).read_text())
            files = manifest["files"]
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"corrupt: unreadable {ENTRY_JSON} ({err})"
        if manifest.get("version") != CACHE_VERSION or (key is not None and manifest.get("key") != key):
            return "stale"
        for name, meta in files.items():
            path = entry / name
            if not path.is_file():
                return f"corrupt: {name} is missing"
            if path.stat().st_size != meta["bytes"]:
                return f"corrupt: {name} has {path.stat().st_size} bytes, expected {meta['bytes']}"
            if verify and _hash_file(path) != meta["blake2b"]:
                return f"corrupt: {name} fails its checksum"
        return None

    def open(self, series_uid: str) -> CachedScan:
        """Open a complete entry read-only; a missing or damaged one raises `CacheError`."""
        problem = self.problem(series_uid)
        if problem is not None:
            raise CacheError(f"has no usable entry for series {series_uid} ({problem})", path=self.dir,
                             fix="Run `noduleflow prepare DATA` (with the same --cache and --spacing) to build it.")
        entry = self.entry_dir(series_uid)
        manifest = json.loads((entry / ENTRY_JSON).read_text())
        hu = np.load(entry / HU_NPY, mmap_mode="r").view(np.ndarray)  # a plain view: np.memmap's slicing runs Python code
        if hu.dtype != np.int16 or list(hu.shape) != manifest["shape"]:
            raise CacheError(f"entry {series_uid} holds a {hu.dtype} array of shape {hu.shape}, expected int16 {manifest['shape']}",
                             path=entry, fix="Delete the folder and run `noduleflow prepare` again.")
        return CachedScan(series_uid, entry, hu, np.asarray(manifest["origin_xyz"]), np.asarray(manifest["spacing_xyz"]),
                          np.asarray(manifest["direction"]).reshape(3, 3))

    def write(self, volume: CtVolume, mask: np.ndarray, key: str, source: dict | None = None) -> int:
        """Store `volume` (and its (I, R, C) bool lung `mask`) as the entry of `volume.series_uid`.

        Returns the bytes written. Any OSError (full disk, permissions) removes this call's temporary
        files and raises `CacheError`; the entry is then left without entry.json, so it reads as
        incomplete and the next `prepare` rebuilds it.
        """
        entry = self.entry_dir(volume.series_uid)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            (entry / ENTRY_JSON).unlink(missing_ok=True)  # incomplete from here until the manifest lands
            for stale in entry.glob(f".*{_TMP}*"):
                stale.unlink()
            files = {HU_NPY: _atomic_write(entry / HU_NPY, lambda f: np.lib.format.write_array(f, np.ascontiguousarray(volume.hu)))}
            files[MASK_NPZ] = _atomic_write(entry / MASK_NPZ, lambda f: f.write(_mask_bytes(mask)))
            _fsync_dir(entry)  # the data renames are durable before the manifest can be
            manifest = {
                "version": CACHE_VERSION, "series_uid": volume.series_uid, "key": key, "source": source,
                "shape": list(volume.shape), "origin_xyz": volume.origin_xyz.tolist(),
                "spacing_xyz": volume.spacing_xyz.tolist(), "direction": volume.direction.ravel().tolist(), "files": files,
            }
            _atomic_write(entry / ENTRY_JSON, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            _fsync_dir(entry)
        except OSError as err:
            for temp in entry.glob(f".*{_TMP}{os.getpid()}"):
                temp.unlink(missing_ok=True)
            raise _write_error(entry, err) from err
        return sum(meta["bytes"] for meta in files.values()) + (entry / ENTRY_JSON).stat().st_size


def check_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise `CacheError` with the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / ".write-test", lambda f: f.write(b"ok"))
        (folder / ".write-test").unlink()
    except OSError as err:
        raise _write_error(folder, err) from err


def source_key(path: Path, root: Path, spacing_xyz: Sequence[float] | None) -> tuple[str, dict]:
    """(key, description) of a scan and the parameters it is prepared with.

    The description lists the scan's files (an .mhd and the data file its header names) by path
    relative to `root`, size and mtime, and hashes the first 4 KB (an .mhd's whole header).
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    files = [path]
    data_file = re.search(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", head, re.MULTILINE)
    if data_file and data_file.group(1) not in (b"LOCAL", b"LIST") and (path.parent / data_file.group(1).decode()).is_file():
        files.append(path.parent / data_file.group(1).decode())
    source = {
        "files": [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "header_blake2b": hashlib.blake2b(head, digest_size=16).hexdigest(),
        "spacing_xyz": None if spacing_xyz is None else [float(s) for s in spacing_xyz],
        "version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:20], source


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (numpy then writes in chunks)."""

    def __init__(self, f):
        self.f, self.hash, self.bytes = f, hashlib.blake2b(digest_size=16), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view)
        self.hash.update(view)
        self.bytes += view.nbytes
        return view.nbytes


def _atomic_write(path: Path, write) -> dict:
    """Write through `write(file)` into a temp name beside `path`, fsync, then rename over `path`."""
    temp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            writer = _HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return {"bytes": writer.bytes, "blake2b": writer.hash.hexdigest()}


def _mask_bytes(mask: np.ndarray) -> bytes:
    packed = LungMask.from_array(mask)
    buf = io.BytesIO()
    np.savez_compressed(buf, lo=packed.lo, packed=packed.packed, width=np.int64(packed.box_shape[2]))
    return buf.getvalue()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_error(folder: Path, err: OSError) -> CacheError:
    if err.errno == errno.ENOSPC:
        return CacheError("the disk is full: the cache entry was not written and its partial files were removed", path=folder,
                          fix="Free disk space or pass --cache on a disk with room (the cache needs about the size of the scans), then rerun.")
    return CacheError(f"cannot be written ({err.strerror or err})", path=folder,
                      fix="Pass --cache with a folder you can write to.")
