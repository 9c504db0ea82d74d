"""report.html in headless Chromium, opened from disk as a user would (file://): every section is there, every
image decodes (naturalWidth > 0), and the page asks the network for nothing."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECTIONS = ("data", "training", "froc", "findings", "missed", "timings", "environment")


def _report_inputs():
    """The unit tests' hand-built inputs (tests/unit/report/report_inputs.py), loaded by path: one builder for both."""
    name = "report_inputs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parents[1] / "unit" / "report" / f"{name}.py"
        )
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_report_renders_with_its_images(browser, tmp_path):
    """`browser` comes first: without Chromium the test is skipped before any scan is synthesized."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from noduleflow.report import write_report

    inputs = _report_inputs().build_inputs(tmp_path)
    path = write_report(inputs.run, detections=inputs.detections, evaluation=inputs.evaluation)
    assert path == inputs.run / "report.html"

    browser.get(path.resolve().as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    assert browser.title == f"noduleflow report: {inputs.run.name}"
    for anchor in SECTIONS:
        section = browser.find_element(By.ID, anchor)
        assert section.is_displayed() and section.find_element(By.TAG_NAME, "h2").text

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
    )
    missed = len(inputs.nodules) - 2
    assert len(images) == 2 + 3 + 1 + len(inputs.findings) + missed  # previews, curves, FROC, gallery, missed
    assert all(done and width > 0 and height > 0 for done, width, height, _ in images), images
    assert max(width for _, width, _, _ in images) <= 560

    froc = json.loads((inputs.evaluation / "froc.json").read_text())
    assert browser.find_element(By.ID, "cpm").text == f"{froc['cpm']:.3f}"
    assert int(browser.find_element(By.ID, "missed-count").text) == froc["nodules"] - froc["hits"]
    # everything is inline: the page loaded no resource of its own (data: URIs are not fetched)
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
