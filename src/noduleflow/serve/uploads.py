"""Uploads: stream a multipart body to disk with a size limit and check its type (zips: `unzip`).

Nothing a client sends is trusted: the body is written to the job's own folder as it arrives (never held in
memory) and cut off at `max_upload_mb` (413) or after `upload_idle_s` without a byte (408); the file's
name only chooses its suffix and passes `files.safe_name`; a zip is unpacked member by member into the
job's folder, flat, and refused (400/413) when a member would land outside it (`../x`, `/abs`, `C:\\x`),
is a symlink or device, is encrypted, or when the members declare or actually unpack to more than
`max_unzipped_mb`, exceed `max_zip_entries`, or compress better than `max_zip_ratio` (a zip bomb).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from python_multipart.multipart import MultipartParser, parse_options_header

from noduleflow.errors import NoduleflowError
from noduleflow.files import safe_name
from noduleflow.serve.settings import ServeSettings

SCAN_SUFFIXES = (".nii.gz", ".mha", ".mhd", ".nii")  # what `ct.read_volume` reads as one file
UPLOAD_SUFFIXES = (".nii.gz", ".mha", ".nii", ".zip")  # what POST /v1/scans takes (an .mhd needs its .raw: in a zip)
# what browsers and clients send for those files; anything else (text/html, image/png, ...) is refused
PART_TYPES = {
    "",
    "application/octet-stream",
    "application/zip",
    "application/x-zip-compressed",
    "application/x-zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-nifti",
    "application/x-nifti-gz",
    "binary/octet-stream",
}


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
    raise UploadError(
        415,
        f"upload {filename[:100]!r} is not a scan noduleflow reads",
        fix="Upload a .mha, .nii.gz or .nii file, or a .zip holding an .mhd + .raw pair or a DICOM series.",
    )


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
        raise UploadError(
            415, "POST /v1/scans takes a multipart/form-data body", fix="Send the scan as the form field 'file'."
        )
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 65536:
        raise UploadError(
            413,
            f"upload of {int(declared) / 2**20:.1f} MiB is over the server's limit of {settings.max_upload_mb:g} MiB",
            fix="Upload a smaller scan (or ask the operator for a larger --max-upload-mb).",
        )
    state = _PartState(field, folder, limit, settings.max_upload_mb)
    parser = MultipartParser(boundary, state.callbacks())
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), settings.upload_idle_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadError(
                    408,
                    f"upload sent nothing for {settings.upload_idle_s:g} s and was cut off",
                    fix="Retry over a faster connection.",
                ) from None
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        state.close()
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart's MultipartParseError and friends: a malformed body
        state.close()
        raise UploadError(
            400,
            f"upload is not a well-formed multipart body ({type(err).__name__})",
            fix="Send the scan as the form field 'file' of a multipart/form-data request.",
        ) from None
    state.close()
    if state.path is None or not state.complete:
        raise UploadError(
            422, f"the multipart body has no file field {field!r}", fix=f"Send the scan as the form field {field!r}."
        )
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
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

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
            raise UploadError(
                415,
                f"upload {filename[:100]!r} was sent as {ctype!r}, not as a scan file",
                fix="Send it as application/octet-stream (or application/zip, application/gzip).",
            )
        self.filename = filename[:255]
        self.path = self.folder / stored_name(filename)
        assert suffix and self.path.parent == self.folder
        self.file = open(self.path, "xb")  # noqa: SIM115 - spans callbacks; closed in _end or close
        self.writing = True

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self.writing:
            return
        self.size += end - start
        if self.size > self.limit:
            raise UploadError(
                413,
                f"upload is over the server's limit of {self.limit_mb:g} MiB",
                fix="Upload a smaller scan (or ask the operator for a larger --max-upload-mb).",
            )
        self.file.write(data[start:end])

    def _end(self) -> None:
        if self.writing:
            self.complete, self.writing = True, False
            self.file.close()

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
