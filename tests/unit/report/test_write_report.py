"""write_report on hand-made inputs (conftest): real values on the page, inlined images, escaping, absent inputs."""

from __future__ import annotations

import base64
import json
import re

import pytest
from report_inputs import TIMINGS, finding, scan_entry, write_run

from noduleflow.errors import NoduleflowError
from noduleflow.report import ReportError, write_report

SECTIONS = ("data", "training", "froc", "findings", "missed", "timings", "environment")


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def test_cpm_and_counts_are_the_evaluations(inputs, page):
    froc = json.loads((inputs.evaluation / "froc.json").read_text())
    assert re.search(r'<span id="cpm">([0-9.]+)</span>', page).group(1) == f"{froc['cpm']:.3f}"
    lo, hi = froc["cpm_ci"]
    assert f"interval {lo:.3f}-{hi:.3f}" in page
    assert f"{froc['scans']} scans, {froc['nodules']} nodules: {froc['hits']} hit" in page
    # missed nodules are recomputed with the evaluation's matching: they agree with its hits
    missed = int(re.search(r'<span id="missed-count">(\d+)</span>', page).group(1))
    assert missed == froc["nodules"] - froc["hits"] == len(inputs.nodules) - 2
    assert f"of {len(inputs.nodules)} annotated nodules were missed" in page


def test_every_image_is_an_inlined_png_and_each_section_has_its_own(inputs, page):
    sources = _images(page)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in sources)
    sections = {a: page.split(f'<section id="{a}">', 1)[1].split("</section>", 1)[0] for a in SECTIONS}
    missed = len(inputs.nodules) - 2
    expected = {"data": 2, "training": 3, "froc": 1, "findings": len(inputs.findings), "missed": missed}
    assert {a: len(_images(body)) for a, body in sections.items()} == {**expected, "timings": 0, "environment": 0}
    assert len(sources) == sum(expected.values())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def test_top_findings_most_probable_first(inputs, page):
    ranked = sorted(p for _, p in inputs.findings)[::-1]
    captions = re.findall(r"#(\d+) p ([0-9.]+)", page.split('id="findings"', 1)[1].split("</section>")[0])
    assert [(int(r), float(p)) for r, p in captions] == [(i + 1, round(p, 2)) for i, p in enumerate(ranked)]


def test_data_timings_and_environment(inputs, page):
    data = page.split('id="data"', 1)[1].split("</section>")[0]
    assert f'<td>{inputs.data}</td><td class="n">2</td><td class="n">{len(inputs.nodules)}</td>' in data
    timings = page.split('id="timings"', 1)[1].split("</section>")[0]
    for step, text in [("segment", "61.5 s"), ("classify", "30.2 s"), ("all parts", "99.8 s"), ("train", "5.3 min")]:
        assert f'<td>{step}</td><td class="n">{text}</td>' in timings
    assert '<td>detection</td><td>2 scans</td><td class="n">3.0 s</td>' in timings
    assert len(TIMINGS) == sum(f"<td>{s}</td>" in timings for s in TIMINGS)
    env = page.split('id="environment"', 1)[1].split("</section>")[0]
    import torch

    assert f"<td>torch</td><td>{torch.__version__}</td>" in env and "<td>CPU flags</td>" in env


def test_hostile_text_is_escaped_and_paths_stay_inside(tmp_path):
    """A series uid and a metric name that are markup, and a PNG path that leaves the detections folder."""
    run = tmp_path / "run"
    write_run(run, None, ("",), epochs=1)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "train_loss": 0.5, "<img src=x onerror=alert(1)>": 1.0}) + "\n")
    det = tmp_path / "det"
    (det / "png").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (900, 300), "gray").save(det / "png" / "scan.png")
    (tmp_path / "secret.png").write_bytes((det / "png" / "scan.png").read_bytes())
    hostile = '<script>alert("uid")</script>'
    scans = [
        scan_entry(hostile, str(tmp_path / "gone.mhd"), [finding((1, 2, 3), 0.8)], ["../secret.png", "png/scan.png"]),
        scan_entry("other", "", [finding((1, 2, 3), 0.7)], ["../secret.png"]),
    ]
    (det / "detections.json").write_text(json.dumps({"scans": scans}))
    page = write_report(run, detections=det).read_text()
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&quot;uid&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    findings = page.split('id="findings"', 1)[1].split("</section>")[0]
    assert len(_images(findings)) == 1  # detect's PNG of the first scan; ../secret.png is never read
    assert "other: the scan is not readable (detections.json names no source file for it)" in findings
    width = Image.open(__import__("io").BytesIO(base64.b64decode(_images(findings)[0].split(",", 1)[1]))).width
    assert width == 560  # downscaled from 900


def test_absent_inputs_say_what_to_run(tmp_path):
    """A detector run with no data folder, detections or evaluation: every section renders and says what to run."""
    run = tmp_path / "detector"
    write_run(run, None, epochs=2)
    (run / "training.json").unlink()
    page = write_report(run, tmp_path / "out" / "r.html").read_text()
    assert (tmp_path / "out" / "r.html").is_file() and not (run / "report.html").exists()
    assert all(f'<section id="{a}">' in page for a in SECTIONS)
    assert len(_images(page)) == 3  # the training curves of the three parts
    for hint in (
        "The run names no data folder",
        "No detections given: run `noduleflow detect",
        "No evaluation: run `noduleflow evaluate",
        "No detections: run `noduleflow detect",
        "Missed nodules need the detections",
        "No training.json with seconds per part",
    ):
        assert hint in page
    assert "This section could not be drawn" not in page


def test_a_plain_digits_run(tmp_path):
    run = tmp_path / "digits"
    write_run(run, None, ("",), epochs=2)
    page = write_report(run).read_text()
    assert "<td>the built-in 8 x 8 handwritten digits (no CT)</td>" in page and "names no data folder" not in page
    assert page.count("digits is a single-part run: detections, FROC and missed nodules come from a detector") == 3
    assert len(_images(page)) == 1 and "<h3>digits</h3>" in page


def test_damaged_inputs_cost_their_section_only(tmp_path):
    run = tmp_path / "run"
    write_run(run, tmp_path / "nowhere", epochs=1)
    (run / "classify" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": "high"}\nnot json\n')
    (run / "training.json").write_text("{not json")
    det, ev = tmp_path / "det", tmp_path / "ev"
    det.mkdir()
    ev.mkdir()
    (det / "detections.json").write_text('{"scans": [{"seriesuid": "a", "findings": [{"coordX": "x"}]}]}')
    (ev / "froc.json").write_text(json.dumps({"cpm": "NaN?", "curve": {"fps": [0, 1]}, "sensitivities": [1, 2]}))
    page = write_report(run, detections=det, evaluation=ev).read_text()
    assert '<span id="cpm">-</span>' in page and "froc.json holds no curve to draw" in page
    assert "holds no findings" in page and "not on this machine" in page
    assert len(_images(page)) == 3  # the three parts' curves (classify's with a gap for the text loss)


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_not_a_run_is_one_error(tmp_path, make):
    target = tmp_path / "x"
    if make == "file":
        target.write_text("")
    elif make == "empty":
        target.mkdir()
    with pytest.raises(ReportError) as err:
        write_report(target)
    assert isinstance(err.value, NoduleflowError) and str(target) in err.value.message
    assert "noduleflow train" in err.value.message


def test_a_detections_folder_that_is_not_there_is_an_error(tmp_path):
    write_run(tmp_path / "run", None, ("",), epochs=1)
    with pytest.raises(ReportError, match="is not a detections folder"):
        write_report(tmp_path / "run", detections=tmp_path / "typo")


def test_cli(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path / "nothing")
    assert code == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    write_run(tmp_path / "run", None, ("",), epochs=1)
    code, out, err = run_cli("report", tmp_path / "run", "--out", tmp_path / "r.html")
    assert code == 0 and out.strip() == str(tmp_path / "r.html")
    assert "<h1>noduleflow report: run</h1>" in (tmp_path / "r.html").read_text()


def test_galleries_are_capped(inputs, monkeypatch):
    from noduleflow.report import results

    monkeypatch.setattr(results, "MAX_FINDINGS", 2)
    monkeypatch.setattr(results, "MAX_MISSED", 0)
    page = write_report(inputs.run, inputs.root / "capped.html", detections=inputs.detections).read_text()
    findings = page.split('id="findings"', 1)[1].split("</section>")[0]
    missed = page.split('id="missed"', 1)[1].split("</section>")[0]
    assert len(_images(findings)) == 2 and f"The 2 most probable of {len(inputs.findings)} findings" in findings
    assert len(_images(missed)) == 0 and "(the 0 largest shown)" in missed


def test_a_failing_section_costs_only_itself(inputs, monkeypatch, caplog):
    from noduleflow.report import curves

    def boom(run):
        raise RuntimeError("<b>boom</b>")

    monkeypatch.setattr(curves, "curves_section", boom)
    page = write_report(inputs.run, inputs.root / "boom.html").read_text()
    training = page.split('id="training"', 1)[1].split("</section>")[0]
    assert "This section could not be drawn: RuntimeError: &lt;b&gt;boom&lt;/b&gt;" in training
    assert "the training section failed" in caplog.text
    assert '<section id="environment">' in page and "<td>torch</td>" in page


def test_the_froc_section_shows_the_malignancy_auc_beside_the_diameter_baseline():
    from noduleflow.report.results import froc_section

    mal = {
        "auc": 0.712,
        "nodules": 32,
        "malignant": 10,
        "auc_ci": [0.55, 0.86],
        "diameter_auc": 0.696,
        "diameter_ci": [0.51, 0.85],
        "difference": 0.016,
        "difference_ci": [-0.15, 0.18],
        "diameter_nodules": 32,
    }
    section = froc_section({"cpm": 0.9, "confidence": 0.95, "malignancy": mal}, None)
    assert (
        "Malignancy ROC AUC 0.712 (95% interval 0.55-0.86) over 32 hit nodules (10 malignant); the annotated "
        "diameter alone 0.696 (0.51-0.85) on 32 of them; difference +0.016 (-0.15 to +0.18)." in section
    )
    # a froc.json from before the baseline, one without bootstrap, and one whose hit nodules are all benign
    old = froc_section({"malignancy": {"auc": 0.7, "nodules": 5, "malignant": 2}}, None)
    assert "Malignancy ROC AUC 0.700 over 5 hit nodules (2 malignant)." in old
    plain = {**mal, "auc_ci": [None, None], "diameter_ci": [None, None], "difference_ci": [None, None]}
    assert "AUC 0.712 over 32 hit nodules (10 malignant); the annotated diameter alone 0.696 on 32 of them; " in (
        froc_section({"malignancy": plain}, None)
    )
    benign = froc_section({"malignancy": {**mal, "malignant": 0, "auc": None}}, None)
    assert "Malignancy: no positive (malignant) among the 32 hit nodules, so no ROC AUC." in benign


def test_the_page_shows_the_evaluations_malignancy_line(inputs, page):
    mal = json.loads((inputs.evaluation / "froc.json").read_text())["malignancy"]
    from noduleflow.report import html
    from noduleflow.report.results import _malignancy_text

    assert mal is not None and "diameter_auc" in mal
    assert f"<p>{html.esc(_malignancy_text(mal, '95%'))}</p>" in page and f" {mal['nodules']} hit nodules" in page
