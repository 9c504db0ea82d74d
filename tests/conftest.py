"""Fixtures shared by every test."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder): 3 half-size synthetic scans (seed 2: nodules of both malignancy classes in
    training and validation) and a detector trained for one short epoch per part, exported as `train detector`
    leaves it. Trained once per session for every test that needs a run; read it, copy what a test changes."""
    from noduleflow.recipes.detector import train_detector
    from noduleflow.synth import synthesize

    root = tmp_path_factory.mktemp("tiny-detector")
    data = root / "data"
    synthesize(data, scans=3, seed=2, size="small", scale=0.5, progress=False)
    tiny = {part: {"run.epochs": 1, "data.num_workers": 0} for part in ("segment", "classify", "malignancy")}
    result = train_detector(
        data, run="tiny", runs_dir=root / "runs", scale=0.02, progress=False, threads=2, overrides=tiny
    )
    return data, result.run_dir
