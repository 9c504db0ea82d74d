"""Two rules for files that every module follows: names from untrusted input, and atomic writes.

`safe_name`: an identifier read from a file or a request (a DICOM SeriesInstanceUID, a file stem, an
upload's name) becomes a file or folder name only through this function, so no header can choose a
path outside the folder it is written into (`../../x`, `/abs/x`, `..`, a NUL byte, a name that is
too long for the file system).

`atomic_write`: the file appears whole or not at all. The data go to a temporary file in the same
folder (same file system, so the rename is atomic), are flushed to disk, then `os.replace`d over
the target: a crash, a full disk or a kill leaves the previous file intact and no partial one.

`writable_dir` and `output_error`: a job checks its output folder before its work, not at its end,
and a write that fails (permission, full disk, read-only file system, a file where a folder should
be) is one `OutputError` naming the path and the fix, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from noduleflow.errors import OutputError

_UMASK = os.umask(0o022)  # read once, at import (single-threaded): os.umask can only be read by setting it
os.umask(_UMASK)

# letters, digits, '.', '_', '-'; not starting with '.' (no hidden files, no '.' or '..'); at most 128 characters
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def safe_name(identifier: object) -> str:
    """`identifier` itself when it is a plain name (1-128 of ``A-Za-z0-9._-``, not starting with '.'),
    else ``id-`` + the first 24 hex digits of its SHA-256: stable, so a rerun finds the same file.

    DICOM UIDs (digits and dots) and LUNA16 series uids pass unchanged; anything that could name
    another folder (`/`, `\\`, `..`, a leading dot, control characters) is hashed.
    """
    text = str(identifier)
    if _SAFE.fullmatch(text):
        return text
    return "id-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for a library that writes files by name (nibabel, torch.export, onnx);
    on a clean exit the file written there is fsynced and renamed to `path`.

    suffix: the temporary name's ending, for writers that choose the format by it (".nii.gz", ".pt2").
    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:  # mkstemp makes it 0600; the file gets the mode open() would have given it (a report others may read)
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it is fsynced and renamed to `path`.

    On any exception the temporary file is removed and `path` is left as it was. `mode` is "w" or
    "wb" (text files get ``newline=""`` unless given, so csv writers control their own line ends).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w":
        kwargs.setdefault("newline", "")
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically (module docstring); returns `path`."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


_WRITE_ERRORS = {  # errno -> (what went wrong, the fix)
    errno.EACCES: ("permission denied", "Write to a folder you own (e.g. pass another -o), or change its permissions."),
    errno.EPERM: (
        "operation not permitted",
        "Write to a folder you own (e.g. pass another -o), or change its permissions.",
    ),
    errno.ENOSPC: ("no space left on the disk", "Free some space or write to another disk, then rerun."),
    errno.EDQUOT: ("the disk quota is exceeded", "Free some space or write to another disk, then rerun."),
    errno.EROFS: ("the file system is read-only", "Write to a folder on a writable disk (e.g. pass another -o)."),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "Pass a folder path, or move that file away."),
    errno.EISDIR: ("is a folder where a file should be written", "Remove or rename that folder, or write elsewhere."),
    errno.EEXIST: ("already exists and is not a folder", "Pass a folder path, or move that file away."),
}
WRITE_ERRNOS = frozenset(_WRITE_ERRORS)
"""The errno values of a write that failed because of the place written to (not a bug): `output_error` explains them."""


def is_torch_write_failure(err: BaseException) -> bool:
    """Whether `err` is how `torch.save` reports a failed write: a RuntimeError, not an OSError, on a full disk."""
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("PytorchStreamWriter failed", "file write failed", "unexpected pos")
    )


def output_error(err: OSError, path: str | os.PathLike | None = None, *, action: str = "cannot write") -> OutputError:
    """`err` (a failed write or mkdir) as one sentence naming the file and the fix.

    path: the file or folder the caller was writing; it is named rather than err.filename, which
    may be an atomic write's temporary file. Without it, err.filename is named.

    action: how the sentence starts ("cannot write"; the CLI, which does not know whether a read or a
    write failed, says "cannot access").
    """
    what, fix = _WRITE_ERRORS.get(err.errno, (err.strerror or str(err), "Check the path and the disk, then rerun."))
    return OutputError(f"{action}: {what}", path=path if path is not None else err.filename, fix=fix)


def writable_dir(path: str | os.PathLike) -> Path:
    """Create folder `path` (and its parents) and prove it writable by creating and removing a file in it.

    Called before a long job (detect, train, evaluate) so that a read-only or mistyped output folder
    fails in its first second, not after hours. Raises `OutputError`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            "is a file, not a folder", path=path, fix="Pass a folder (it is created if missing), or move the file away."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise output_error(err, path) from None
    return path
