"""The CLI as a user meets it: version, help on every command, and one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from noduleflow import __version__
from noduleflow.cli import app

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    """Every command and sub-command path of the app, e.g. ["synth"], ["train", "digits"]."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd, prefix: list[str]) -> None:
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, prefix + [name])
        else:
            paths.append(prefix)

    walk(root, [])
    return paths


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"noduleflow {__version__}"


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output, f"`noduleflow {' '.join(path)} --help` should show a working example"


def test_user_error_prints_one_line_and_exits_2(tmp_path) -> None:
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "noduleflow", "synth", str(not_a_folder), "--scans", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert str(not_a_folder) in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_flag_exits_2_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "noduleflow", "synth", "out", "--scans", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--scans" in proc.stderr


def test_an_unknown_detect_runtime_exits_2_naming_the_choices(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "noduleflow", "detect", str(tmp_path), "--run", str(tmp_path), "--runtime", "tensorrt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--runtime" in proc.stderr and "onnx" in proc.stderr and "torch" in proc.stderr
