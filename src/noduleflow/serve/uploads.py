"""Uploads: stream a multipart body to disk with a size limit, check its type, unpack zips safely.

Nothing a client sends is trusted: the body is written to the job's own folder as it arrives (never held in
memory) and cut off at `max_upload_mb` (413) or after `upload_idle_s` without a byte (408); the file's
name only chooses its suffix and passes `files.safe_name`; a zip is unpacked member by member into the
job's folder, flat, and refused (400/413) when a member would land outside it (`../x`, `/abs`, `C:\\x`),
is a symlink or device, is encrypted, or when the members declare or actually unpack to more than
`max_unzipped_mb`, exceed `max_zip_entries`, or compress better than `max_zip_ratio` (a zip bomb).
"""

from __future__ import annotations

import asyncio
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from python_multipart.multipart import MultipartParser, parse_options_header

from noduleflow.errors import NoduleflowError
from noduleflow.files import safe_name
from noduleflow.serve.settings import ServeSettings

SCAN_SUFFIXES = (".nii.gz", ".mha", ".mhd", ".nii")   # what `ct.read_volume` reads as one file
UPLOAD_SUFFIXES = (".nii.gz", ".mha", ".nii", ".zip")  # what POST /v1/scans takes (an .mhd needs its .raw: in a zip)
# what browsers and clients send for those files; anything else (text/html, image/png, ...) is refused
PART_TYPES = {"", "application/octet-stream", "application/zip", "application/x-zip-compressed", "application/x-zip",
              "application/gzip", "application/x-gzip", "application/x-nifti", "application/x-nifti-gz", "binary/octet-stream"}
_CHUNK = 1 << 20
_RATIO_MIN_BYTES = 1 << 20  # a member's compression ratio is checked from this size on (tiny members compress anyhow)
_DRIVE = re.compile(r"^[A-Za-z]:")


class UploadError(NoduleflowError):
    """An upload the server refuses; `status` is the HTTP status it answers with (4xx)."""

    def __init__(self, status: int, what: str, *, fix: str | None = None):
        self.status = status
        super().__init__(what, fix=fix)


@dataclass(frozen=True)
class Upload:
    """A received upload: the client's file name (for display), where it lies, its size in bytes."""

    filename: str
    path: Path
    size: int


def upload_suffix(filename: str) -> str:
    """The accepted suffix `filename` ends with (lower case), else UploadError 415."""
    name = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise UploadError(415, f"upload {filename[:100]!r} is not a scan noduleflow reads",
                      fix="Upload a .mha, .nii.gz or .nii file, or a .zip holding an .mhd + .raw pair or a DICOM series.")


def stored_name(filename: str) -> str:
    """The file name an upload is stored under: its sanitised stem (the scan's series uid) + its suffix."""
    suffix = upload_suffix(filename)
    stem = PurePosixPath(filename.replace("\\", "/")).name[: -len(suffix)]
    return safe_name(stem or "scan") + suffix


async def receive_upload(request, folder: Path, settings: ServeSettings, field: str = "file") -> Upload:
    """Stream the multipart body of `request` (a Starlette Request); write its `field` part into `folder`.

    Raises UploadError: 415 not multipart / wrong file type, 413 over `max_upload_mb`, 408 idle, 422 no `field` part.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(415, "POST /v1/scans takes a multipart/form-data body", fix="Send the scan as the form field 'file'.")
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 65536:
        raise UploadError(413, f"upload of {int(declared) / 2**20:.1f} MiB is over the server's limit of {settings.max_upload_mb:g} MiB",
                          fix="Upload a smaller scan (or ask the operator for a larger --max-upload-mb).")
    state = _PartState(field, folder, limit, settings.max_upload_mb)
    parser = MultipartParser(boundary, state.callbacks())
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), settings.upload_idle_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise UploadError(408, f"upload sent nothing for {settings.upload_idle_s:g} s and was cut off",
                                  fix="Retry over a faster connection.") from None
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        state.close()
        raise
    except Exception as err:  # python-multipart's MultipartParseError and friends: a malformed body
        state.close()
        raise UploadError(400, f"upload is not a well-formed multipart body ({type(err).__name__})",
                          fix="Send the scan as the form field 'file' of a multipart/form-data request.") from None
    state.close()
    if state.path is None or not state.complete:
        raise UploadError(422, f"the multipart body has no file field {field!r}", fix=f"Send the scan as the form field {field!r}.")
    return Upload(state.filename, state.path, state.size)


class _PartState:
    """python-multipart callbacks that write one field's data to a file, counting bytes against the limit."""

    def __init__(self, field: str, folder: Path, limit: int, limit_mb: float):
        self.field, self.folder, self.limit, self.limit_mb = field, folder, limit, limit_mb
        self.headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self.file = None
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.complete = False
        self.writing = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value_cb,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self.headers, self.writing = {}, False

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _value_cb(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._value) > 8192:
            raise UploadError(400, "a multipart header is longer than 8 KiB")

    def _header_end(self) -> None:
        self.headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def _headers_done(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        if disposition.get(b"name", b"").decode("utf-8", "replace") != self.field or self.path is not None:
            return
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        suffix = upload_suffix(filename)
        ctype = parse_options_header(self.headers.get(b"content-type", b""))[0].decode("latin-1").lower()
        if ctype not in PART_TYPES:
            raise UploadError(415, f"upload {filename[:100]!r} was sent as {ctype!r}, not as a scan file",
                              fix="Send it as application/octet-stream (or application/zip, application/gzip).")
        self.filename = filename[:255]
        self.path = self.folder / stored_name(filename)
        assert suffix and self.path.parent == self.folder
        self.file = open(self.path, "xb")
        self.writing = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self.writing:
            return
        self.size += end - start
        if self.size > self.limit:
            raise UploadError(413, f"upload is over the server's limit of {self.limit_mb:g} MiB",
                              fix="Upload a smaller scan (or ask the operator for a larger --max-upload-mb).")
        self.file.write(data[start:end])

    def _end(self) -> None:
        if self.writing:
            self.complete, self.writing = True, False
            self.file.close()

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


def check_container(path: Path) -> None:
    """Refuse (400) a file whose bytes are not the container its suffix promises (gzip for .nii.gz, zip for .zip)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    name = path.name.lower()
    if name.endswith(".nii.gz") and head[:2] != b"\x1f\x8b":
        raise UploadError(400, f"upload {path.name!r} ends in .nii.gz but is not gzip-compressed", fix="Upload the .nii.gz file itself.")
    if name.endswith(".zip") and not zipfile.is_zipfile(path):
        raise UploadError(400, f"upload {path.name!r} is not a valid zip archive", fix="Zip the .mhd + .raw pair or the DICOM series again.")


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
        raise UploadError(400, f"upload {archive.name!r} is a corrupt or unsupported zip archive ({err})",
                          fix="Zip the .mhd + .raw pair or the DICOM series again with standard (deflate) compression.") from None
    scans = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SCAN_SUFFIXES))
    if len(scans) > 1:
        raise UploadError(400, f"upload {archive.name!r} holds {len(scans)} scans ({', '.join(p.name for p in scans[:4])})",
                          fix="Upload one scan per zip.")
    if scans:
        return scans[0]
    if not any(folder.iterdir()):
        raise UploadError(400, f"upload {archive.name!r} holds no files", fix="Zip an .mhd + .raw pair or a DICOM series.")
    return folder


def _checked_members(zf: zipfile.ZipFile, settings: ServeSettings) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > settings.max_zip_entries:
        raise UploadError(413, f"zip upload holds {len(infos)} entries, more than the server's {settings.max_zip_entries}",
                          fix="Upload one scan per zip.")
    members, total = [], 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\x00" in name:
            raise UploadError(400, f"zip entry {name[:100]!r} points outside the archive's folder",
                              fix="Zip the scan's files with relative names.")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UploadError(400, f"zip entry {name[:100]!r} is a symbolic link", fix="Zip the files themselves, not links to them.")
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
            raise UploadError(413, f"zip entry {name[:100]!r} unpacks {info.file_size / max(info.compress_size, 1):.0f} times larger "
                              f"than it is stored (limit {settings.max_zip_ratio:g}): a zip bomb?", fix="Upload the scan's own files.")
        members.append(info)
    return members


def _too_big(settings: ServeSettings) -> UploadError:
    return UploadError(413, f"zip upload unpacks to more than the server's limit of {settings.max_unzipped_mb:g} MiB",
                       fix="Upload one scan per zip (or ask the operator for a larger --max-unzipped-mb).")


def _unique(folder: Path, name: str) -> Path:
    """`folder / name`, or `name` with a counter before its suffixes when taken (two series files of one name)."""
    path, k = folder / name, 1
    while path.exists():
        stem, dot, rest = name.partition(".")
        path, k = folder / f"{stem}-{k}{dot}{rest}", k + 1
    return path


async def read_body(request, limit: int, idle_s: float) -> bytes:
    """The whole (small) body of `request`, refused (413) past `limit` bytes or (408) when idle for `idle_s`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes", fix="Send fewer patches per request.")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise UploadError(408, f"request sent nothing for {idle_s:g} s and was cut off") from None
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"request body is over the limit of {limit} bytes", fix="Send fewer patches per request.")
        chunks.append(chunk)
    return b"".join(chunks)


def multipart_field(body: bytes, content_type: str, field: str = "file") -> bytes:
    """The bytes of form field `field` in a multipart `body` already in memory (UploadError 400/422 otherwise)."""
    _, params = parse_options_header(content_type)
    parts: dict[str, bytes] = {}
    current = {"headers": {}, "name": b"", "value": b"", "data": []}

    def header_end():
        current["headers"][current["name"].lower()] = current["value"]
        current["name"], current["value"] = b"", b""

    def part_end():
        _, disp = parse_options_header(current["headers"].get(b"content-disposition", b""))
        parts.setdefault(disp.get(b"name", b"").decode("utf-8", "replace"), b"".join(current["data"]))
        current["headers"], current["data"] = {}, []

    callbacks = {"on_header_field": lambda d, s, e: current.__setitem__("name", current["name"] + d[s:e]),
                 "on_header_value": lambda d, s, e: current.__setitem__("value", current["value"] + d[s:e]),
                 "on_header_end": header_end, "on_part_data": lambda d, s, e: current["data"].append(d[s:e]),
                 "on_part_end": part_end}
    try:
        parser = MultipartParser(params.get(b"boundary", b""), callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as err:
        raise UploadError(400, f"request is not a well-formed multipart body ({type(err).__name__})") from None
    if field not in parts:
        raise UploadError(422, f"the multipart body has no field {field!r}", fix=f"Send the .npy file as the form field {field!r}.")
    return parts[field]


def read_patches(data: bytes, patch_size: tuple[int, int, int], max_patches: int):
    """(N, D, H, W) float32 HU patches from the bytes of a `.npy` file holding (D, H, W) or (N, D, H, W) numbers.

    Never unpickles (`allow_pickle=False`): an object array is refused (400), like bytes that are not .npy;
    a wrong shape, dtype, non-finite values or more than `max_patches` patches are 422.
    """
    import io

    import numpy as np

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # ValueError for pickled object arrays and bad headers, EOFError, OSError...
        raise UploadError(400, f"body is not a .npy array without pickled objects ({type(err).__name__}: {str(err)[:120]})",
                          fix="Send np.save's output of an int16 or float array in HU.") from None
    if not isinstance(array, np.ndarray):
        raise UploadError(400, "body is an .npz archive, not one .npy array", fix="Send np.save's output of one array.")
    if array.dtype.kind not in "iuf":
        raise UploadError(422, f"patches of dtype {array.dtype} are not numbers in HU", fix="Send an int16 or float array.")
    want = tuple(patch_size)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != want or len(array) == 0:
        raise UploadError(422, f"patches of shape {list(array.shape)} do not match the classifier's patch size {list(want)}",
                          fix=f"Send (D, H, W) = {list(want)} or (N, {', '.join(map(str, want))}); GET /v1/model tells the size.")
    if len(array) > max_patches:
        raise UploadError(422, f"{len(array)} patches in one request; the limit is {max_patches}", fix="Split them over several requests.")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UploadError(422, "patches hold NaN or infinite values", fix="Send finite HU values.")
    return array
