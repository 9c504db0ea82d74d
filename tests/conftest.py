"""Fixtures shared by every test."""

from __future__ import annotations

import logging
import sys

import pytest

from noduleflow.cli import main


@pytest.fixture(autouse=True)
def _noduleflow_logger_as_found():
    """Every test leaves the "noduleflow" logger as it found it: a CLI run in-process (run_cli, typer's
    CliRunner) installs the CLI's handler, which must not print a later test's library logs."""
    logger = logging.getLogger("noduleflow")
    handlers, level = list(logger.handlers), logger.level
    yield
    for handler in [h for h in logger.handlers if h not in handlers]:
        logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `noduleflow ARGS` in this process as a user would; returns (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["noduleflow", *map(str, args)])
        logger = logging.getLogger("noduleflow")
        handlers, level = list(logger.handlers), logger.level
        try:
            with pytest.raises(SystemExit) as stop:
                main()
        finally:  # the handler the CLI installs ends with its "process", as it would outside a test
            for handler in [h for h in logger.handlers if h not in handlers]:
                logger.removeHandler(handler)
            logger.setLevel(level)
        captured = capsys.readouterr()
        return stop.value.code, captured.out, captured.err

    return run
