"""`noduleflow.files`: names from untrusted input never leave their folder; writes are whole or absent."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.files import atomic_open, atomic_write, safe_name


@pytest.mark.parametrize(
    "uid", ["1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860", "scan_01-a.b", "x"]
)
def test_plain_identifiers_pass_unchanged(uid: str) -> None:
    assert safe_name(uid) == uid


@pytest.mark.parametrize(
    "uid", ["..", ".", "", "../../../x", "/abs/x", "a/b", "a\\b", ".hidden", "x" * 129, "a\x00b", "é"]
)
def test_identifiers_that_could_name_another_place_are_hashed(uid: str) -> None:
    name = safe_name(uid)
    assert name.startswith("id-") and len(name) == 27 and name == safe_name(uid)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_identifier_becomes_a_name_inside_its_folder(tmp_path_factory, uid: str) -> None:
    folder = tmp_path_factory.getbasetemp() / "names"
    name = safe_name(uid)
    assert 1 <= len(name) <= 128 and not name.startswith(".") and "/" not in name and "\\" not in name
    assert (folder / name).resolve().parent == folder.resolve()


def test_atomic_write_replaces_whole_files(tmp_path) -> None:
    path = atomic_write(tmp_path / "a.txt", "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = atomic_write(tmp_path / "a.csv", "old\n")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["a.csv"]


def test_atomic_writes_get_the_mode_open_gives_not_mkstemps_0600(tmp_path):
    """A report or a FROC is meant to be shared: its mode follows the umask, as a plain open() would."""
    written = atomic_write(tmp_path / "report.html", "<html></html>")
    plain = tmp_path / "plain.html"
    plain.write_text("<html></html>")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
