"""Two rules for files that every module follows: names from untrusted input, and atomic writes.

`safe_name`: an identifier read from a file or a request (a DICOM SeriesInstanceUID, a file stem, an
upload's name) becomes a file or folder name only through this function, so no header can choose a
path outside the folder it is written into (`../../x`, `/abs/x`, `..`, a NUL byte, a name that is
too long for the file system).

`atomic_write`: the file appears whole or not at all. The data go to a temporary file in the same
folder (same file system, so the rename is atomic), are flushed to disk, then `os.replace`d over
the target: a crash, a full disk or a kill leaves the previous file intact and no partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterator

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
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit it is fsynced and renamed to `path`.

    On any exception the temporary file is removed and `path` is left as it was. `mode` is "w" or
    "wb" (text files get ``newline=""`` unless given, so csv writers control their own line ends).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if mode == "w":
        kwargs.setdefault("newline", "")
        kwargs.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically (module docstring); returns `path`."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
