"""`noduleflow demo`'s wiring with its stages stubbed (the real pipeline takes minutes): the stage order,
OUT/timings.json, the settings handed to training, the closing lines and the last line `CPM X`."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

import noduleflow.detect
import noduleflow.evaluate
import noduleflow.recipes.detector
import noduleflow.report
import noduleflow.synth
from noduleflow.demo import DEMO_HELD_OUT, DEMO_SCALE, DEMO_SCANS, STAGES


@pytest.fixture
def stubbed(monkeypatch):
    """Replace synthesize / train_detector / detect / evaluate; returns the calls made, in order."""
    calls: list[tuple[str, dict]] = []

    def synthesize(out, *, scans, seed, **kwargs):
        calls.append(("synthesize", {"out": out, "scans": scans, "seed": seed}))
        return SimpleNamespace(describe=lambda: f"{scans} scans of seed {seed}", nodules=0 if scans == 1 else 21)

    def train_detector(data, **kwargs):
        calls.append(("train", {"data": data, **kwargs}))
        return SimpleNamespace(describe=lambda: "trained")

    def detect(source, run, out, **kwargs):
        calls.append(("detect", {"source": source, "run": run, "out": out}))
        return SimpleNamespace(describe=lambda: "detected")

    def evaluate(data, submission, out):
        calls.append(("evaluate", {"data": data, "submission": submission}))
        froc = SimpleNamespace(cpm=0.7412, cpm_ci=(0.6, 0.85), confidence=0.95, n_scans=12, n_nodules=21)
        return SimpleNamespace(froc=froc, table=lambda: "FROC table", describe=lambda: "21 nodules: 17 hit")

    monkeypatch.setattr(noduleflow.synth, "synthesize", synthesize)
    monkeypatch.setattr(noduleflow.recipes.detector, "train_detector", train_detector)
    monkeypatch.setattr(noduleflow.detect, "detect", detect)

    def write_report(run_dir, out, *, detections, evaluation, timings):
        calls.append(("report", {"run": run_dir, "detections": detections, "evaluation": evaluation, **timings}))
        out.write_text("<html></html>")
        return out

    monkeypatch.setattr(noduleflow.evaluate, "evaluate", evaluate)
    monkeypatch.setattr(noduleflow.report, "write_report", write_report)
    return calls


def test_demo_runs_the_stages_in_order_writes_timings_and_ends_with_the_cpm(stubbed, run_cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli("demo", "--out", out)
    assert code in (0, None)
    assert [name for name, _ in stubbed] == ["synthesize", "synthesize", "train", "detect", "evaluate", "report"]
    report = stubbed[-1][1]  # the report is handed the run, its detections, its evaluation and the stages before it
    assert (report["run"], report["detections"], report["evaluation"]) == (
        out / "runs" / "detector",
        out / "detections",
        out / "evaluation",
    )
    assert set(report) - {"run", "detections", "evaluation"} == set(STAGES[:-1])
    train, held_out = stubbed[0][1], stubbed[1][1]
    assert (train["scans"], train["seed"], held_out["scans"], held_out["seed"]) == (DEMO_SCANS, 0, DEMO_HELD_OUT, 10000)
    kwargs = stubbed[2][1]
    assert (kwargs["scale"], kwargs["mine"], kwargs["overrides"]) == (DEMO_SCALE, True, {})
    assert kwargs["runs_dir"] == out / "runs" and kwargs["run"] == "detector"
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == list(STAGES) and all(v >= 0 for v in timings.values())
    lines = stdout.rstrip("\n").splitlines()
    assert lines[-1] == "CPM 0.741"
    assert re.fullmatch(r"CPM \d\.\d{3}", lines[-1])
    text = " ".join(stdout.split())
    assert "CPM 0.741 (95% interval 0.600-0.850) on 12 held-out scans holding 21 nodules" in text
    assert f"Report: {out / 'report.html'}" in text
    run = out / "runs" / "detector"
    for command in (
        f"noduleflow serve --run {run}",
        f"noduleflow export {run}",
        f"noduleflow detect YOUR_SCANS --run {run}",
    ):
        assert command in text
    assert "time per stage" in text and not re.search(r"\bnan\b", stdout)


def test_demo_flags_reach_training_and_a_trained_run_is_reused(stubbed, run_cli, tmp_path):
    out = tmp_path / "demo"
    code, _, _ = run_cli("demo", "--out", out, "--scans", 5, "--held-out", 4, "--seed", 3, "--scale", 0.5, "--no-mine")
    assert code in (0, None)
    kwargs = stubbed[2][1]
    assert (stubbed[0][1]["scans"], stubbed[1][1]["seed"], kwargs["scale"], kwargs["mine"]) == (5, 10003, 0.5, False)
    (out / "runs" / "detector").mkdir(parents=True)
    (out / "runs" / "detector" / "training.json").write_text("{}")
    stubbed.clear()
    code, stdout, _ = run_cli("demo", "--out", out)
    assert "train" not in [name for name, _ in stubbed] and "already trained" in stdout


def test_held_out_scans_without_nodules_stop_before_training(stubbed, run_cli, tmp_path):
    code, _, stderr = run_cli("demo", "--out", tmp_path / "demo", "--held-out", 1)
    assert code == 2 and "hold no nodule to score" in stderr and "--held-out" in stderr
    assert [name for name, _ in stubbed] == ["synthesize", "synthesize"]
