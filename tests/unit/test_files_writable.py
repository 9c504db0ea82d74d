"""`noduleflow.files.writable_dir` and `output_error`: an output folder is checked before the work, and a
failed write is one sentence naming the path and the fix."""

from __future__ import annotations

import errno
import os

import pytest

from noduleflow import files
from noduleflow.errors import OutputError
from noduleflow.files import is_torch_write_failure, output_error, writable_dir


def test_creates_the_folder_and_leaves_nothing_in_it(tmp_path):
    out = writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize("make", ["file", "inside_file"])
def test_a_file_where_a_folder_should_be(tmp_path, make):
    (tmp_path / "f").write_text("x")
    target = tmp_path / "f" if make == "file" else tmp_path / "f" / "out"
    with pytest.raises(OutputError) as err:
        writable_dir(target)
    assert str(tmp_path / "f") in err.value.message and "not a folder" in err.value.message
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "no space left"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_an_unwritable_folder_names_itself_and_the_fix(tmp_path, monkeypatch, code, words):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError) as err:
        writable_dir(tmp_path / "out")
    assert words in err.value.message and str(tmp_path / "out") in err.value.message and "." in err.value.fix


def test_output_error_names_the_target_not_a_temporary_file():
    err = output_error(OSError(errno.EISDIR, "Is a directory", "/x/.y.csv.abc.tmp"), "/x/y.csv")
    assert err.path == "/x/y.csv" and "folder where a file" in err.message
    assert output_error(OSError(errno.EACCES, "Permission denied", "/x/z")).path == "/x/z"
    assert output_error(OSError(errno.EIO, "I/O error"), "/x").message.startswith("/x: cannot write: I/O error")


def test_torch_write_failures_are_recognised():
    assert is_torch_write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert is_torch_write_failure(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
    assert not is_torch_write_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_torch_write_failure(OSError("PytorchStreamWriter failed"))
