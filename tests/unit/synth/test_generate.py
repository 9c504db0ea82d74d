"""Bad arguments and unusable output folders fail at once with the project's error, naming the fix."""

from __future__ import annotations

import os

import pytest

from noduleflow.errors import ConfigError, NoduleflowError
from noduleflow.synth import synthesize


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"scans": 0}, "--scans 1 or more"),
        ({"scans": 2.5}, "--scans 1 or more"),
        ({"seed": -1}, "--seed 0"),
        ({"size": "huge"}, "small, full"),
        ({"scans": 3, "subsets": 0}, "--subsets between 1 and 3"),
        ({"scans": 3, "subsets": 4}, "--subsets between 1 and 3"),
        ({"scale": 2.0}, "smaller factor"),
        ({"workers": 0}, "one per CPU"),
    ],
)
def test_bad_arguments_raise_config_errors_with_the_fix(tmp_path, kwargs, words):
    with pytest.raises(ConfigError) as err:
        synthesize(tmp_path / "out", **{"scans": 1, **kwargs})
    assert words in err.value.message and err.value.fix
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "data"
    target.write_text("not a folder")
    with pytest.raises(NoduleflowError, match="is a file, not a folder") as err:
        synthesize(target, scans=1)
    assert err.value.path == str(target)


def test_an_output_folder_below_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NoduleflowError, match="cannot be written") as err:
        synthesize(tmp_path / "file" / "data", scans=1)
    assert "Choose a folder you can write to" in err.value.message


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(NoduleflowError, match="cannot be written"):
            synthesize(locked / "data", scans=1)
    finally:
        locked.chmod(0o700)


def test_workers_are_not_forked_while_other_threads_run():
    """A fork copies the locks other threads hold (ONNX Runtime's pools after a detect): with a second thread
    alive the synth workers start from a fork server instead; alone, the process forks (cheaper)."""
    import threading

    from noduleflow.synth.generate import _start_method

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert _start_method() in ("forkserver", "spawn")
    finally:
        stop.set()
        other.join()
