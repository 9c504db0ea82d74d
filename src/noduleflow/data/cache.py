"""The scan cache: each scan read once, stored as a memory-mapped int16 array plus its lung mask.

One entry per series, in `<cache>/<params>/<safe_name(seriesuid)>/` (the uid comes from a file name or a
header, so it names a folder only through `noduleflow.files.safe_name`)::

    hu.npy          (I, R, C) int16 HU, read back with np.load(mmap_mode="r"): a patch costs a page-cache copy
    lung_mask.npz   the lung mask's bounding box and its bits, packed and deflated (a few KB per scan)
    entry.json      geometry (origin, spacing, direction), sizes and checksums, the key, the source files'
                    size and mtime, and a checksum of itself; written last

and `<cache>/<params>/.locks/<safe_name(seriesuid)>.lock`, flock'ed by the one process writing that
entry (`ScanCache.lock`); kept outside the entry so a scan that fails to read leaves no entry folder.

`<params>` names the preprocessing (`v1-native`, or `v1-0.7x0.7x1.25mm` when resampled), so several
spacings can live side by side. An entry is complete only once `entry.json` exists, its key matches
the source file and its files have the recorded sizes: every file is written to a temporary name in
the same folder, fsynced and renamed, and `entry.json` goes last. A crash or a full disk leaves an
entry without `entry.json`, which the next `prepare` rebuilds. The key hashes the source files (relative
path, size, mtime and the first 4 KB, which hold an .mhd header) with the spacing and CACHE_VERSION.

Trust is checked cheaply on every open, because training must never read a wrong entry in silence:
entry.json's own checksum, the series it names, the source files' size and mtime_ns against the
files on disk now (a scan changed after `prepare` makes its entry stale), each file's size, the
bytes of hu.npy's header (a header damaged at the same size would otherwise crash np.load or
misread the voxels), 16 blocks of 4 KB sampled across its voxels (another scan's file copied over it),
and the whole of the few-KB mask. A change elsewhere in the voxels is left to `prepare --verify`,
which re-hashes them. Every failure is a `CacheError` that names the fix.
The cache costs about what the int16 scans cost: the mask adds a few kilobytes, not a voxel's worth.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.ct import geometry
from noduleflow.ct.volume import CtVolume
from noduleflow.data.cache_files import (  # noqa: F401 (check_writable and source_key are part of this module's API)
    CACHE_VERSION,
    ENTRY_JSON,
    FORMAT,
    HU_NPY,
    MASK_NPZ,
    TMP,
    atomic_write_hashed,
    changed_source,
    check_writable,
    file_problem,
    fsync_dir,
    hash_bytes,
    manifest_checksum,
    npy_header,
    read_manifest,
    source_key,
    write_error,
)
from noduleflow.errors import CacheError
from noduleflow.files import safe_name

DEFAULT_CACHE_NAME = ".noduleflow-cache"
LOCKS = ".locks"
_HELD: dict[Path, int] = {}  # lock files this process holds -> depth (ScanCache.lock)
_REBUILD = "Run `noduleflow prepare DATA` (with the same --cache and --spacing) to rebuild it."


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
        self.lo = np.asarray(lo, dtype=np.int64).reshape(3)  # first voxel (I, R, C) of the box
        self.packed = np.asarray(packed, dtype=np.uint8)  # (Ib, Rb, ceil(Cb / 8)), bits along C
        self.box_shape = np.array([*self.packed.shape[:2], width], dtype=np.int64)  # (Ib, Rb, Cb)

    @classmethod
    def from_array(cls, mask: np.ndarray) -> LungMask:
        """(I, R, C) bool -> packed form (an empty mask keeps an empty box)."""
        mask = np.asarray(mask, dtype=bool)
        nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        if any(n.size == 0 for n in nz):
            return cls(mask.shape, (0, 0, 0), np.zeros((0, 0, 0), np.uint8), 0)
        lo, hi = np.array([n[0] for n in nz]), np.array([n[-1] + 1 for n in nz])
        box = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        return cls(mask.shape, lo, np.packbits(box, axis=-1), int(hi[2] - lo[2]))

    @property
    def empty(self) -> bool:
        return self.box_shape.prod() == 0

    def to_array(self) -> np.ndarray:
        """The full (I, R, C) bool mask."""
        out = np.zeros(self.shape, dtype=bool)
        if not self.empty:
            (i, r, c), (di, dr, dc) = self.lo, self.box_shape
            out[i : i + di, r : r + dr, c : c + dc] = np.unpackbits(self.packed, axis=-1, count=int(dc)).astype(bool)
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
    mask_blake2b: the checksum entry.json records for lung_mask.npz, checked on every `lung_mask()`.
    """

    series_uid: str
    path: Path
    hu: np.ndarray
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    direction: np.ndarray
    mask_blake2b: str | None = None

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
        """The lung mask (read and checked on each call; callers keep the few they need).

        A file damaged since the entry was opened raises `CacheError`, never a zip or numpy error.
        """
        path = self.path / MASK_NPZ
        try:
            if not path.is_file():  # gone, or a folder or FIFO (would block)
                raise ValueError("it is not a regular file")
            data = path.read_bytes()
            if self.mask_blake2b is not None and hash_bytes(data) != self.mask_blake2b:
                raise ValueError("it fails its checksum")
            return _parse_mask(data, self.shape)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise CacheError(
                f"the lung mask of series {self.series_uid} is unreadable ({err})", path=path, fix=_REBUILD
            ) from err

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
        """The entry's folder: the uid passes through `safe_name`, so a uid like '..' or 'a/b' stays inside."""
        return self.dir / safe_name(series_uid)

    def series_uids(self) -> tuple[str, ...]:
        """Series whose entry.json is intact (complete as far as a listing can tell), sorted.

        Read from each entry.json, since a folder's name is the uid only when `safe_name` kept it.
        """
        if not self.dir.is_dir():
            return ()
        uids = []
        for folder in self.dir.iterdir():
            try:
                uids.append(str(read_manifest(folder / ENTRY_JSON)["series_uid"]))
            except (OSError, ValueError, KeyError, RecursionError):
                continue
        return tuple(sorted(uids))

    def problem(self, series_uid: str, key: str | None = None, *, verify: bool = False) -> str | None:
        """Why the entry is unusable ('missing', 'stale...', 'corrupt: ...'), or None if it can be trusted.

        key: the key `source_key` gives now (prepare knows it); without it, the source files' size
        and mtime_ns recorded at write time are compared with the files on disk. Cheap either way:
        a few stats, hu.npy's header and the few-KB mask are read. `verify` also re-hashes hu.npy in full.
        """
        entry = self.entry_dir(series_uid)
        if not (entry / ENTRY_JSON).exists():
            return "missing"
        try:
            manifest = read_manifest(entry / ENTRY_JSON)
        except (OSError, ValueError, RecursionError) as err:  # RecursionError: garbage like [[[[...]]]]
            return f"corrupt: {ENTRY_JSON} ({type(err).__name__}: {err})"[:300]
        except KeyError:
            return "stale: written by an older noduleflow"
        if manifest["series_uid"] != series_uid:
            return f"corrupt: {ENTRY_JSON} names series {manifest['series_uid']}"
        if key is not None and manifest["key"] != key:
            return "stale"
        if key is None:
            changed = changed_source(manifest["source"], self.spacing_xyz)
            if changed:
                return f"stale: {changed} since `prepare` built the entry"
        for name, meta in manifest["files"].items():
            try:
                problem = file_problem(entry / name, meta, verify)
            except OSError as err:
                problem = f"is unreadable ({err.strerror or err})"
            if problem:
                return f"corrupt: {name} {problem}"
        return None

    def open(self, series_uid: str) -> CachedScan:
        """Open a trusted entry read-only; a missing, damaged or stale one raises `CacheError` with the fix."""
        problem = self.problem(series_uid)
        if problem is not None:
            raise CacheError(
                f"has no usable entry for series {series_uid} ({problem})",
                path=self.dir,
                fix=_REBUILD.replace("rebuild", "build" if problem == "missing" else "rebuild"),
            )
        entry = self.entry_dir(series_uid)
        try:
            manifest = read_manifest(entry / ENTRY_JSON)
            hu = np.load(entry / HU_NPY, mmap_mode="r").view(
                np.ndarray
            )  # a plain view: np.memmap's slicing runs Python code
            if hu.dtype != np.int16 or list(hu.shape) != manifest["shape"]:
                raise ValueError(f"it holds a {hu.dtype} array of shape {hu.shape}, expected int16 {manifest['shape']}")
            geometry_ = [np.asarray(manifest[k], dtype=np.float64) for k in ("origin_xyz", "spacing_xyz", "direction")]
            return CachedScan(
                series_uid,
                entry,
                hu,
                geometry_[0].reshape(3),
                geometry_[1].reshape(3),
                geometry_[2].reshape(3, 3),
                manifest["files"][MASK_NPZ]["blake2b"],
            )
        except (OSError, ValueError, KeyError, TypeError) as err:  # changed between the check and the load
            raise CacheError(
                f"the entry of series {series_uid} is unreadable ({err})", path=entry, fix=_REBUILD
            ) from err

    @contextlib.contextmanager
    def lock(self, series_uid: str):
        """Hold the entry's exclusive write lock (flock on `.locks/<name>.lock`; the kernel drops it if we die).

        Two `prepare` runs on one cache then never write one entry at once, and the temporaries a
        writer finds while holding the lock can only be a dead process's. Re-entrant within a process
        (a caller may hold it around a check and `write`), not meant to be shared between threads.
        Raises `CacheError` when the cache folder cannot be written.
        """
        path = self.dir / LOCKS / f"{safe_name(series_uid)}.lock"
        if path in _HELD:
            _HELD[path] += 1
            try:
                yield
            finally:
                _HELD[path] -= 1
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(path.parent, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[path] = 1
            yield
        finally:
            _HELD.pop(path, None)
            os.close(fd)

    def write(
        self, volume: CtVolume, mask: np.ndarray, key: str, source: dict | None = None, series_uid: str | None = None
    ) -> int:
        """Store `volume` (and its (I, R, C) bool lung `mask`) as the entry of `series_uid` (default volume.series_uid).

        source: `source_key`'s description; its files' size and mtime_ns are what `open` compares.
        Returns the bytes written. Holds the entry's `lock` throughout. Any OSError (full disk,
        permissions) removes the temporary files and raises `CacheError`; the entry is then left without
        entry.json, so it reads as incomplete and the next `prepare` rebuilds it.
        """
        uid = volume.series_uid if series_uid is None else series_uid
        entry = self.entry_dir(uid)
        try:
            with self.lock(uid):
                if entry.is_symlink() or (entry.exists() and not entry.is_dir()):
                    entry.unlink()  # a stray file where the entry belongs
                entry.mkdir(parents=True, exist_ok=True)
                _remove(entry / ENTRY_JSON)  # incomplete from here until the manifest lands
                for stale in [entry / HU_NPY, entry / MASK_NPZ, *entry.glob(f".*{TMP}*")]:
                    _remove(stale)  # under the lock: a dead writer's, or damage
                hu = np.ascontiguousarray(volume.hu)
                files = {HU_NPY: atomic_write_hashed(entry / HU_NPY, lambda f: np.lib.format.write_array(f, hu))}
                files[HU_NPY].update(npy_header(entry / HU_NPY))
                files[MASK_NPZ] = atomic_write_hashed(entry / MASK_NPZ, lambda f: f.write(_mask_bytes(mask)))
                fsync_dir(entry)  # the data renames are durable before the manifest can be
                manifest = {
                    "version": CACHE_VERSION,
                    "format": FORMAT,
                    "series_uid": uid,
                    "key": key,
                    "source": source,
                    "shape": list(volume.shape),
                    "origin_xyz": volume.origin_xyz.tolist(),
                    "spacing_xyz": volume.spacing_xyz.tolist(),
                    "direction": volume.direction.ravel().tolist(),
                    "files": files,
                }
                manifest["checksum"] = manifest_checksum(manifest)
                atomic_write_hashed(entry / ENTRY_JSON, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
                fsync_dir(entry)
                manifest_bytes = (entry / ENTRY_JSON).stat().st_size
        except OSError as err:
            for temp in entry.glob(f".*{TMP}{os.getpid()}"):
                temp.unlink(missing_ok=True)
            raise write_error(entry, err) from err
        return sum(meta["bytes"] for meta in files.values()) + manifest_bytes


def _remove(path: Path) -> None:
    """Delete a file, a symlink or a folder (damage may leave any of them where an entry's file belongs)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _parse_mask(data: bytes, shape: tuple[int, int, int]) -> LungMask:
    """lung_mask.npz's bytes -> LungMask; ValueError/KeyError when they do not describe a mask of `shape`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        lo, packed, width = np.asarray(z["lo"]), np.asarray(z["packed"]), int(z["width"])
    if lo.shape != (3,) or packed.ndim != 3 or packed.dtype != np.uint8 or -(-width // 8) != packed.shape[2]:
        raise ValueError("it does not hold a packed mask")
    mask = LungMask(shape, lo, packed, width)
    if not mask.empty and (np.any(mask.lo < 0) or np.any(mask.lo + mask.box_shape > shape)):
        raise ValueError("its box lies outside the scan")
    return mask


def _mask_bytes(mask: np.ndarray) -> bytes:
    packed = LungMask.from_array(mask)
    buf = io.BytesIO()
    np.savez_compressed(buf, lo=packed.lo, packed=packed.packed, width=np.int64(packed.box_shape[2]))
    return buf.getvalue()
