"""Session fixtures: the inputs of a report built by hand (report_inputs) and the report made of them."""

from __future__ import annotations

import pytest
from report_inputs import Inputs, build_inputs


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="session")
def page(inputs) -> str:
    """The report of the full inputs (built once: it reads and draws the scans)."""
    from noduleflow.report import write_report

    path = write_report(
        inputs.run, inputs.root / "report.html", detections=inputs.detections, evaluation=inputs.evaluation
    )
    return path.read_text(encoding="utf-8")
