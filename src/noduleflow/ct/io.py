"""Read and write CT volumes by file name: .mhd/.raw, .mha, .nii, .nii.gz, and DICOM series folders.

One reader per format (`metaimage`, `nifti`, `dicom`), each validating its input and raising
`ScanError` with the file and the fix; this module picks the reader or writer, and is the one place
where whatever a reader still raises on a file its checks did not foresee becomes a ScanError naming
the file, so no reader bug reaches a user as a traceback.
"""

from __future__ import annotations

import struct
import zlib
from importlib import import_module
from pathlib import Path

from noduleflow.ct.volume import CtVolume
from noduleflow.errors import NoduleflowError, ScanError

# suffix -> (module, function): a format's library (pydicom, nibabel) is imported only when a scan of
# that format is read, so a process that only touches .mhd files never pays for the others
_READERS = {
    ".mhd": ("metaimage", "read_metaimage"),
    ".mha": ("metaimage", "read_metaimage"),
    ".nii": ("nifti", "read_nifti"),
    ".nii.gz": ("nifti", "read_nifti"),
}
_UNEXPECTED = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    ArithmeticError,
    MemoryError,
    zlib.error,
    struct.error,
)
"""What a reader may still raise on a file its own checks did not foresee (OverflowError and
ZeroDivisionError are ArithmeticErrors); pydicom's and nibabel's own exception types are caught by
their module, so that neither library is imported to read another format."""
_LIBRARIES = ("pydicom", "nibabel", "pylibjpeg", "libjpeg")
_WRITERS = {
    ".mhd": ("metaimage", "write_metaimage"),
    ".mha": ("metaimage", "write_metaimage"),
    ".nii": ("nifti", "write_nifti"),
    ".nii.gz": ("nifti", "write_nifti"),
}


def _load(module: str, function: str):
    return getattr(import_module(f"noduleflow.ct.{module}"), function)


def read_volume(path: str | Path) -> CtVolume:
    """Read a scan file, or a folder holding one DICOM series, into a `CtVolume` (int16 HU, (I, R, C)).

    Every failure to read it is a ScanError (its cause chained as `__cause__`); a programming error
    (NameError, AssertionError...) is not dressed up as a problem with the file.
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(
            "does not exist",
            path=path,
            fix="Check the path: a scan is a .mhd, .mha, .nii or .nii.gz file, or a DICOM series folder",
        )
    if not path.is_dir() and not path.is_file():
        raise ScanError(
            "is not a regular file (a pipe, socket or device)",
            path=path,
            fix="Pass a scan file (.mhd, .mha, .nii, .nii.gz) or a DICOM series folder",
        )
    reader = _load("dicom", "read_dicom_series") if path.is_dir() else _load(*_READERS[_suffix(path, "read")])
    try:
        if not path.is_dir():
            open(path, "rb").close()  # an unreadable file is reported as such, not as whatever a library makes of it
        return reader(path)
    except NoduleflowError:
        raise
    except Exception as err:
        if not isinstance(err, _UNEXPECTED) and not type(err).__module__.startswith(_LIBRARIES):
            raise
        raise _as_scan_error(err, path) from err


def _as_scan_error(err: Exception, path: Path) -> ScanError:
    """The ScanError a user sees when a reader failed in a way its own checks did not name."""
    if isinstance(err, MemoryError):
        return ScanError(
            "needs more memory than is free to be read",
            path=path,
            fix="Close other programs or read it on a machine with more memory",
        )
    if isinstance(err, OSError) and err.errno is not None:
        return ScanError(
            f"cannot be read ({err.strerror})",
            path=path,
            fix="Check that the file is readable by you (its permissions) and complete",
        )
    return ScanError(
        f"cannot be read as a CT scan ({type(err).__name__}: {str(err)[:200]})",
        path=path,
        fix="The file is damaged or not a scan: check that it opens in another viewer and copy it again",
    )


def write_volume(volume: CtVolume, path: str | Path) -> Path:
    """Write a `CtVolume` as .mhd (+ .raw next to it), .mha, .nii or .nii.gz, chosen by the suffix.

    Returns the path written (the header's, for .mhd).
    """
    path = Path(path)
    return _load(*_WRITERS[_suffix(path, "write")])(volume, path)


def _suffix(path: Path, action: str) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".mhd", ".mha", ".nii"):
        if name.endswith(suffix):
            return suffix
    dicom_hint = " (for DICOM, pass the folder that holds the series)" if action == "read" else ""
    raise ScanError(
        f"has a suffix noduleflow cannot {action}", path=path, fix=f"Use .mhd, .mha, .nii or .nii.gz{dicom_hint}"
    )
