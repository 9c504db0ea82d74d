"""Zip uploads, unpacked safely: flat, into the job's own folder, with the limits that stop zip bombs.

A member is refused (400) when its name would land outside the folder (`../x`, `/abs`, `C:\\x`), when it is a
symlink or device or encrypted; the archive is refused (413) when its members declare or actually unpack to
more than `max_unzipped_mb`, number more than `max_zip_entries`, or one compresses better than `max_zip_ratio`.
Names pass `files.safe_name`; files are created exclusively ("xb"), so nothing existing is overwritten or followed.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from noduleflow.files import safe_name
from noduleflow.serve.settings import ServeSettings
from noduleflow.serve.uploads import SCAN_SUFFIXES, UploadError

_CHUNK = 1 << 20
_RATIO_MIN_BYTES = 1 << 20  # a member's compression ratio is checked from this size on (tiny members compress anyhow)
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_container(path: Path) -> None:
    """Refuse (400) a file whose bytes are not the container its suffix promises (gzip for .nii.gz, zip for .zip)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    name = path.name.lower()
    if name.endswith(".nii.gz") and head[:2] != b"\x1f\x8b":
        raise UploadError(
            400,
            f"upload {path.name!r} ends in .nii.gz but is not gzip-compressed",
            fix="Upload the .nii.gz file itself.",
        )
    if name.endswith(".zip") and not zipfile.is_zipfile(path):
        raise UploadError(
            400,
            f"upload {path.name!r} is not a valid zip archive",
            fix="Zip the .mhd + .raw pair or the DICOM series again.",
        )


def extract_zip(archive: Path, folder: Path, settings: ServeSettings) -> Path:
    """Unpack `archive` flat into `folder` (created) under the module docstring's rules; returns what to read:
    the one scan file it holds (.mhd, .mha, .nii, .nii.gz), else `folder` (a DICOM series)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _checked_members(zf, settings)
            folder.mkdir()
            written = 0
            for info in members:
                dest = _unique(folder, safe_name(PurePosixPath(info.filename.replace("\\", "/")).name))
                with zf.open(info) as src, open(dest, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > settings.max_unzipped_bytes:
                            raise _too_big(settings)
                        out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        raise UploadError(
            400,
            f"upload {archive.name!r} is a corrupt or unsupported zip archive ({err})",
            fix="Zip the .mhd + .raw pair or the DICOM series again with standard (deflate) compression.",
        ) from None
    scans = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SCAN_SUFFIXES))
    if len(scans) > 1:
        raise UploadError(
            400,
            f"upload {archive.name!r} holds {len(scans)} scans ({', '.join(p.name for p in scans[:4])})",
            fix="Upload one scan per zip.",
        )
    if scans:
        return scans[0]
    if not any(folder.iterdir()):
        raise UploadError(
            400, f"upload {archive.name!r} holds no files", fix="Zip an .mhd + .raw pair or a DICOM series."
        )
    return folder


def _checked_members(zf: zipfile.ZipFile, settings: ServeSettings) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > settings.max_zip_entries:
        raise UploadError(
            413,
            f"zip upload holds {len(infos)} entries, more than the server's {settings.max_zip_entries}",
            fix="Upload one scan per zip.",
        )
    members, total = [], 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\x00" in name:
            raise UploadError(
                400,
                f"zip entry {name[:100]!r} points outside the archive's folder",
                fix="Zip the scan's files with relative names.",
            )
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UploadError(
                400, f"zip entry {name[:100]!r} is a symbolic link", fix="Zip the files themselves, not links to them."
            )
        if info.is_dir() or kind == stat.S_IFDIR:
            continue
        if kind not in (0, stat.S_IFREG):
            raise UploadError(400, f"zip entry {name[:100]!r} is not a regular file", fix="Zip only the scan's files.")
        if info.flag_bits & 0x1:
            raise UploadError(400, f"zip entry {name[:100]!r} is encrypted", fix="Zip the scan without a password.")
        if parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue  # macOS resource forks and hidden files: not part of a scan
        total += info.file_size
        if total > settings.max_unzipped_bytes:
            raise _too_big(settings)
        if info.file_size >= _RATIO_MIN_BYTES and info.file_size > settings.max_zip_ratio * max(info.compress_size, 1):
            raise UploadError(
                413,
                f"zip entry {name[:100]!r} unpacks {info.file_size / max(info.compress_size, 1):.0f} times larger "
                f"than it is stored (limit {settings.max_zip_ratio:g}): a zip bomb?",
                fix="Upload the scan's own files.",
            )
        members.append(info)
    return members


def _too_big(settings: ServeSettings) -> UploadError:
    return UploadError(
        413,
        f"zip upload unpacks to more than the server's limit of {settings.max_unzipped_mb:g} MiB",
        fix="Upload one scan per zip (or ask the operator for a larger --max-unzipped-mb).",
    )


def _unique(folder: Path, name: str) -> Path:
    """`folder / name`, or `name` with a counter before its suffixes when taken (two series files of one name)."""
    path, k = folder / name, 1
    while path.exists():
        stem, dot, rest = name.partition(".")
        path, k = folder / f"{stem}-{k}{dot}{rest}", k + 1
    return path
