"""The exception types a user sees.

Every error a user can cause (a bad file, a malformed CSV, a wrong flag, a bad upload) is a
`NoduleflowError`: one sentence naming the input and what is wrong, plus the fix. The CLI prints
`error: <message>` without a traceback and exits with `exit_code` (2).
"""

from __future__ import annotations

from os import PathLike


class NoduleflowError(Exception):
    """A problem with the user's input, stated once with the fix.

    `what` says what is wrong; `path` names the file or folder at fault (if any); `fix` tells
    the user what to do about it.
    """

    exit_code = 2

    def __init__(self, what: str, *, path: str | PathLike | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.path}: {self.what}" if self.path else self.what
        if self.fix:
            text = f"{text.rstrip('.')}. {self.fix}"
        return text


class ScanError(NoduleflowError):
    """A scan file or DICOM folder that cannot be read as a CT volume."""


class CsvError(NoduleflowError):
    """A LUNA16-style CSV with missing columns, bad values or unknown series."""


class CacheError(NoduleflowError):
    """A cache folder that cannot be written or holds unusable entries."""


class ConfigError(NoduleflowError, ValueError):
    """A configuration value or command-line flag that is out of range or unknown."""


class CheckpointError(NoduleflowError):
    """A checkpoint or run folder that is missing, corrupt or incompatible."""


class OutputError(NoduleflowError):
    """An output folder or file that cannot be written (read-only, full disk, a file where a folder should be)."""


class TrainingError(NoduleflowError):
    """A training run that cannot go on: its gradients stopped being finite numbers."""
