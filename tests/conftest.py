"""Fixtures shared by every test."""

from __future__ import annotations

import sys

import pytest

from noduleflow.cli import main


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `noduleflow ARGS` in this process as a user would; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["noduleflow", *map(str, args)])
        with pytest.raises(SystemExit) as stop:
            main()
        captured = capsys.readouterr()
        return stop.value.code, captured.out, captured.err

    return run
