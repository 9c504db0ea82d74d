"""How a cache entry's files are written and checked on disk (see `noduleflow.data.cache` for the layout).

Kept apart from `cache.py` so that the entry's reader/writer API reads on one screen: here are the
atomic write (temp name holding our pid, fsync, rename) with its running checksum, the key of a
source scan, entry.json's self-checksum, and the cheap checks `ScanCache.problem` runs on every open.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noduleflow.errors import CacheError
from noduleflow.files import atomic_path

CACHE_VERSION = 1
ENTRY_JSON, HU_NPY, MASK_NPZ = "entry.json", "hu.npy", "lung_mask.npz"
TMP = ".tmp-"  # in every temporary file's name, followed by the writer's pid
SAMPLE_BLOCKS = 16
FORMAT = 2  # entry.json's layout: 2 added the source stats, the npy header hash and the self-checksum


def check_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise `CacheError` with the fix.

    The probe's name holds our pid: two `prepare` runs on one cache must not remove each other's.
    """
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_hashed(probe, lambda f: f.write(b"ok"))
        probe.unlink()
    except OSError as err:
        raise write_error(folder, err) from err


def source_key(path: Path, root: Path, spacing_xyz: Sequence[float] | None) -> tuple[str, dict]:
    """(key, description) of a scan and the parameters it is prepared with.

    The description lists the scan's files (an .mhd and the data file its header names) by path
    relative to `root`, size and mtime_ns, and hashes the first 4 KB (an .mhd's whole header).
    `root` is added to it after the key is taken, so `open` can find the files again to compare
    their stats while a moved data folder keeps its key. Raises OSError when the scan cannot be read.
    """
    path, root = Path(path), Path(root)
    with open(path, "rb") as f:
        head = f.read(4096)
    files = [path]
    data_file = re.search(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", head, re.MULTILINE)
    if data_file and data_file.group(1) not in (b"LOCAL", b"LIST"):
        named = path.parent / data_file.group(1).decode("utf-8", "replace")
        if named.is_file():
            files.append(named)
    source = {
        "files": [[os.path.relpath(p, root), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "header_blake2b": hashlib.blake2b(head, digest_size=16).hexdigest(),
        "spacing_xyz": None if spacing_xyz is None else [float(s) for s in spacing_xyz],
        "version": CACHE_VERSION,
    }
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:20]
    return key, {**source, "root": str(root.absolute())}


def read_manifest(path: Path) -> dict:
    """entry.json, checked: ValueError when it is not JSON or fails its checksum, KeyError for an older layout."""
    if path.exists() and not path.is_file():  # a folder or a FIFO (reading one would block)
        raise ValueError("it is not a regular file")
    manifest = json.loads(path.read_bytes())
    if not isinstance(manifest, dict):
        raise ValueError("it is not a JSON object")
    if manifest.get("version") != CACHE_VERSION or manifest.get("format") != FORMAT:
        raise KeyError("format")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ValueError("it fails its checksum")
    return manifest


def manifest_checksum(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hash_bytes(json.dumps(body, sort_keys=True).encode())


def changed_source(source: dict | None, spacing_xyz: tuple[float, ...] | None) -> str | None:
    """What differs between the source recorded at write time and the disk now (None: nothing we can see).

    A source file that is gone is not a change: the cache may outlive a moved or deleted data folder.
    """
    if not source:
        return None
    if source.get("spacing_xyz") != (None if spacing_xyz is None else list(spacing_xyz)):
        return "the entry was built with another --spacing"
    root = Path(source.get("root", "."))
    for rel, size, mtime_ns in source["files"]:
        try:
            stat = (root / rel).stat()
        except OSError:
            continue
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return f"its scan file {root / rel} changed"
    return None


def file_problem(path: Path, meta: dict, verify: bool) -> str | None:
    """Why one data file of an entry disagrees with entry.json, or None."""
    size = path.stat().st_size
    if size != meta["bytes"]:
        return f"has {size} bytes, expected {meta['bytes']}"
    if "header_bytes" in meta:  # hu.npy: its header, byte for byte
        with open(path, "rb") as f:
            if hash_bytes(f.read(meta["header_bytes"])) != meta["header_blake2b"]:
                return "has a damaged header"
        if _sample_hash(path, meta["header_bytes"], size) != meta["sample_blake2b"]:
            return "holds other voxels than were written (sampled blocks differ)"
    if (verify or path.name == MASK_NPZ) and hash_file(path) != meta["blake2b"]:  # the mask is a few KB
        return "fails its checksum"
    return None


def npy_header(path: Path) -> dict:
    """{'header_bytes', 'header_blake2b', 'sample_blake2b'} of an .npy file: its header, and a sample of its data."""
    with open(path, "rb") as f:
        head = f.read(12)
    major = np.lib.format.read_magic(io.BytesIO(head))[0]  # magic, version, then a 2- (v1) or 4-byte length
    size = 10 + int.from_bytes(head[8:10], "little") if major == 1 else 12 + int.from_bytes(head[8:12], "little")
    with open(path, "rb") as f:
        header = f.read(size)
    return {
        "header_bytes": size,
        "header_blake2b": hash_bytes(header),
        "sample_blake2b": _sample_hash(path, size, path.stat().st_size),
    }


def _sample_hash(path: Path, start: int, end: int) -> str:
    """Hash of SAMPLE_BLOCKS blocks of 4 KB spread evenly over bytes [start, end) of a file.

    Why: a same-size file of other voxels (another scan's hu.npy copied over, blocks a crash left
    zeroed) passes every size and header check; 16 reads catch it for about the cost of the header's,
    where hashing all of hu.npy (`--verify`) reads hundreds of MB.
    """
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for offset in sorted({int(o) for o in np.linspace(start, max(end - 4096, start), SAMPLE_BLOCKS)}):
            f.seek(offset)
            h.update(f.read(4096))
    return h.hexdigest()


class HashingWriter:
    """A write-only file wrapper that hashes what passes through (numpy then writes in chunks)."""

    def __init__(self, f):
        self.f, self.hash, self.bytes = f, hashlib.blake2b(digest_size=16), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view)
        self.hash.update(view)
        self.bytes += view.nbytes
        return view.nbytes


def atomic_write_hashed(path: Path, write) -> dict:
    """Write through `write(file)` atomically (`files.atomic_path`: temp beside `path`, fsync, rename over `path`),
    hashing the bytes as they pass; returns {"bytes", "blake2b"}.

    The temporary name ends in TMP + our pid, so that a writer that cleans a cache entry can tell a dead
    writer's leftovers from a live one's.
    """
    with atomic_path(path, suffix=f"{TMP}{os.getpid()}") as temp, open(temp, "wb") as f:
        writer = HashingWriter(f)
        write(writer)
    return {"bytes": writer.bytes, "blake2b": writer.hash.hexdigest()}


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_error(folder: Path, err: OSError) -> CacheError:
    if err.errno == errno.ENOSPC:
        return CacheError(
            "the disk is full: the cache entry was not written and its partial files were removed",
            path=folder,
            fix="Free disk space or pass --cache on a disk with room (the cache needs about the size of the scans), then rerun.",
        )
    return CacheError(
        f"cannot be written ({err.strerror or err})", path=folder, fix="Pass --cache with a folder you can write to."
    )
