"""Only the CLI installs a log handler: one rich handler on the "noduleflow" logger, never on the root."""

import logging

from rich.logging import RichHandler


def test_the_cli_installs_one_rich_handler_on_noduleflow_and_none_on_root(run_cli, tmp_path):
    logger, root = logging.getLogger("noduleflow"), logging.getLogger()
    root_before = list(root.handlers)
    before = list(logger.handlers)
    try:
        for _ in range(2):  # a second run in the same process adds no second handler
            code, _, err = run_cli("evaluate", tmp_path / "missing.csv", tmp_path)
            assert code == 2 and "error:" in err
        rich = [h for h in logger.handlers if isinstance(h, RichHandler)]
        assert len(rich) == 1 and logger.level == logging.INFO
        assert root.handlers == root_before
    finally:
        for h in logger.handlers:
            if h not in before:
                logger.removeHandler(h)


def test_a_library_warning_reaches_the_terminal_once(run_cli, tmp_path, capsys):
    logger = logging.getLogger("noduleflow")
    before = list(logger.handlers)
    try:
        run_cli("evaluate", tmp_path / "missing.csv", tmp_path)
        logger.warning("a scan of the previous run is gone; starting afresh")
        err = capsys.readouterr().err
        assert err.count("starting afresh") == 1 and "WARNING" in err
    finally:
        for h in logger.handlers:
            if h not in before:
                logger.removeHandler(h)
