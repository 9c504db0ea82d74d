"""Only the CLI installs a log handler: one rich handler on the "noduleflow" logger, never on the root."""

import logging

from rich.logging import RichHandler

from noduleflow import cli
from noduleflow.errors import CsvError


def test_the_cli_installs_one_rich_handler_on_noduleflow_and_none_on_root():
    logger, root = logging.getLogger("noduleflow"), logging.getLogger()
    before, root_before, level = list(logger.handlers), list(root.handlers), logger.level
    try:
        cli._log_to_terminal()
        cli._log_to_terminal()  # a second command in the same process adds no second handler
        assert len([h for h in logger.handlers if isinstance(h, RichHandler)]) == 1 and logger.level == logging.INFO
        assert root.handlers == root_before
    finally:
        for h in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(h)
        logger.setLevel(level)


def test_a_library_warning_reaches_the_terminal_once_before_the_error(run_cli, tmp_path, monkeypatch):
    import noduleflow.evaluate

    def scoring(*args, **kwargs):
        logging.getLogger("noduleflow").warning("3 marks name no scored scan")
        raise CsvError("has no scored marks", path=tmp_path / "s.csv", fix="Check it.")

    monkeypatch.setattr(noduleflow.evaluate, "evaluate", scoring)
    before = list(logging.getLogger("noduleflow").handlers)
    code, _, err = run_cli("evaluate", tmp_path, tmp_path / "s.csv")
    lines = err.strip().splitlines()
    assert code == 2 and err.count("3 marks name no scored scan") == 1 and "WARNING" in lines[0]
    assert lines[-1] == f"error: {tmp_path / 's.csv'}: has no scored marks. Check it."
    assert logging.getLogger("noduleflow").handlers == before  # run_cli ends the CLI's handler with the run
