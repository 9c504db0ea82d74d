"""`noduleflow evaluate` through the CLI on two synthetic scans: the annotations as a perfect
submission score CPM 1, a partial one scores what it found, and every bad input ends in one
`error:` line with exit status 2."""

import json
import shutil

import pandas as pd
import pytest

from noduleflow.synth import synthesize


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, scans=2, seed=0, size="small", subsets=2)
    return out


@pytest.fixture(scope="module")
def truth(data):
    frame = pd.read_csv(data / "annotations_with_malignancy.csv", dtype={"seriesuid": str})
    assert frame["mal_bool"].nunique() == 2 and frame["seriesuid"].nunique() == 2  # both classes, both scans
    return frame


def _submission(frame, path, malignancy=None):
    sub = frame[["seriesuid", "coordX", "coordY", "coordZ"]].assign(probability=0.9)
    if malignancy is not None:
        sub["malignancy"] = malignancy
    sub.to_csv(path, index=False)
    return path


def test_the_annotations_as_submission_score_one(run_cli, data, truth, tmp_path):
    sub = _submission(truth, tmp_path / "submission.csv", malignancy=truth["mal_bool"].astype(float))
    code, out, err = run_cli("evaluate", str(data), str(sub), "-o", str(tmp_path / "eval"), "--bootstrap", "200")
    assert code == 0, err
    assert "CPM" in out and "1.000-1.000" in out
    report = json.loads((tmp_path / "eval" / "froc.json").read_text())
    assert (report["cpm"], report["cpm_ci"], report["sensitivities"]) == (1.0, [1.0, 1.0], [1.0] * 7)
    assert (report["scans"], report["nodules"], report["hits"], report["false_positives"]) == (
        2,
        len(truth),
        len(truth),
        0,
    )
    assert report["series_from"] == "subset*/"
    assert report["malignancy"]["auc"] == 1.0 and report["malignancy"]["nodules"] == len(truth)
    assert (tmp_path / "eval" / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_malignancy_auc_is_printed_beside_the_diameter_baselines(run_cli, data, truth, tmp_path):
    from noduleflow.metrics.classification import roc_auc

    # the malignancy CSV's diameters are the baseline's score (the label's row), not annotations.csv's
    with_mal = data.parent / "with-mal"
    shutil.copytree(data, with_mal)
    rescaled = truth.assign(diameter_mm=truth["mal_bool"] * 10 + 5)  # ranks every pair right
    rescaled.to_csv(with_mal / "annotations_with_malignancy.csv", index=False)
    sub = _submission(truth, tmp_path / "submission.csv", malignancy=1.0 - truth["mal_bool"].astype(float))
    args = ("evaluate", str(with_mal), str(sub), "-o", str(tmp_path / "eval"), "--bootstrap", "300", "--seed", "5")
    code, out, err = run_cli(*args)
    assert code == 0, err
    n, k = len(truth), int(truth["mal_bool"].sum())
    line = next(text for text in out.splitlines() if text.startswith("malignancy ROC AUC"))
    assert line == (
        f"malignancy ROC AUC 0.000 (95% 0.00-0.00) over {n} hit nodules ({k} malignant); "
        "diameter alone 1.000 (1.00-1.00); difference -1.000 (-1.00 to -1.00)"
    )
    report = json.loads((tmp_path / "eval" / "froc.json").read_text())["malignancy"]
    assert report == {
        "auc": 0.0,
        "nodules": n,
        "malignant": k,
        "auc_ci": [0.0, 0.0],
        "diameter_auc": 1.0,
        "diameter_ci": [1.0, 1.0],
        "difference": -1.0,
        "difference_ci": [-1.0, -1.0],
        "diameter_nodules": n,
        "bootstrap": 300,
        "confidence": 0.95,
    }
    # on annotations.csv's own diameters (the generator's), the baseline is the truth's diameter AUC
    code, out, err = run_cli("evaluate", str(data), str(sub), "-o", str(tmp_path / "plain"), "--bootstrap", "0")
    assert code == 0, err
    ruler = roc_auc(truth["diameter_mm"].to_numpy(), truth["mal_bool"].to_numpy().astype(bool))
    assert f"; diameter alone {ruler:.3f}; difference {-ruler:+.3f}" in out
    assert json.loads((tmp_path / "plain" / "froc.json").read_text())["malignancy"]["diameter_auc"] == ruler


def test_a_scan_left_out_of_the_submission_counts_its_nodules_as_misses(run_cli, data, truth, tmp_path):
    first = truth["seriesuid"].iloc[0]
    kept = truth[truth["seriesuid"] == first]
    sub = _submission(kept, tmp_path / "submission.csv")
    code, _, err = run_cli("evaluate", str(data), str(sub), "--bootstrap", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "froc.json").read_text())  # OUT defaults to the submission's folder
    assert report["cpm"] == pytest.approx(len(kept) / len(truth))
    assert (report["scans"], report["hits"]) == (2, len(kept))
    assert report["malignancy"] is None  # the CSV has no malignancy column
    assert (tmp_path / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("beside", ["stale", "broken"])
def test_a_detections_json_beside_the_submission_never_changes_its_score(run_cli, data, truth, tmp_path, beside):
    first = truth["seriesuid"].iloc[0]
    sub = _submission(truth[truth["seriesuid"] == first], tmp_path / "submission.csv", malignancy=0.5)
    code, _, err = run_cli("evaluate", str(data), str(sub), "--bootstrap", "0", "-o", str(tmp_path / "alone"))
    assert code == 0, err
    # an older run's detections.json (every nodule found, malignancy inverted), or a half-written one
    (tmp_path / "detections.json").write_text(
        '{"scans": ['
        if beside == "broken"
        else json.dumps(
            {
                "scans": [
                    {
                        "seriesuid": uid,
                        "findings": [
                            {
                                "coordX": r.coordX,
                                "coordY": r.coordY,
                                "coordZ": r.coordZ,
                                "probability": 0.9,
                                "malignancy": 1.0 - r.mal_bool,
                            }
                            for r in rows.itertuples()
                        ],
                    }
                    for uid, rows in truth.groupby("seriesuid")
                ]
            }
        )
    )
    code, _, err = run_cli("evaluate", str(data), str(sub), "--bootstrap", "0", "-o", str(tmp_path / "beside"))
    assert code == 0, err
    alone, with_json = (json.loads((tmp_path / name / "froc.json").read_text()) for name in ("alone", "beside"))
    assert with_json == alone and alone["cpm"] < 1


@pytest.mark.parametrize("row, words", [("inf", "diameter_mm infinite"), ("0", "diameter_mm zero")])
def test_annotations_with_a_diameter_that_is_no_size_are_one_error_line(run_cli, data, truth, tmp_path, row, words):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    frame = pd.read_csv(copy / "annotations.csv", dtype={"seriesuid": str})
    frame.loc[0, "diameter_mm"] = float(row)
    frame.to_csv(copy / "annotations.csv", index=False)
    code, _, err = run_cli("evaluate", str(copy), str(_submission(truth, tmp_path / "submission.csv")))
    assert code == 2 and err.count("\n") == 1 and "annotations.csv: row 2" in err and words in err, err


def test_marks_of_unknown_series_are_warned_and_counted(run_cli, data, truth, tmp_path):
    stray = truth.iloc[:2].assign(seriesuid="1.2.3.unknown")
    sub = _submission(pd.concat([truth, stray]), tmp_path / "submission.csv")
    with pytest.warns(UserWarning, match="2 mark"):
        code, _, err = run_cli("evaluate", str(data), str(sub), "--bootstrap", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "froc.json").read_text())
    assert (report["unlisted_marks"], report["cpm"]) == (2, 1.0)


@pytest.mark.parametrize(
    "text, words",
    [
        ("seriesuid,coordX,coordY,coordZ\n1.2,0,0,0\n", ["submission.csv", "probability"]),
        (
            "seriesuid,coordX,coordY,coordZ,probability\n{uid},1,2,3,high\n",
            ["submission.csv", "row 2", "probability", "'high'"],
        ),
        (
            "seriesuid,coordX,coordY,coordZ,probability\n1.2.3.unknown,1,2,3,0.5\n",
            ["submission.csv", "none of its 1 series"],
        ),
        ("", ["submission.csv", "cannot be parsed"]),
    ],
)
def test_a_malformed_submission_is_one_error_line(run_cli, data, truth, tmp_path, text, words):
    sub = tmp_path / "submission.csv"
    sub.write_text(text.format(uid=truth["seriesuid"].iloc[0]))
    code, out, err = run_cli("evaluate", str(data), str(sub))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "froc.json").exists()


def test_missing_annotations_and_missing_submission_are_one_error_line(run_cli, truth, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "seriesuids.csv").write_text("\n".join(truth["seriesuid"].unique()) + "\n")
    sub = _submission(truth, tmp_path / "submission.csv")
    code, _, err = run_cli("evaluate", str(data), str(sub))
    assert code == 2 and err.count("\n") == 1
    assert "annotations.csv: is missing" in err
    code, _, err = run_cli("evaluate", str(data), str(tmp_path / "nothing.csv"))
    assert code == 2 and err.count("\n") == 1 and "nothing.csv" in err


def test_an_out_that_is_a_file_is_one_error_line_before_scoring(run_cli, data, truth, tmp_path):
    sub = _submission(truth, tmp_path / "submission.csv")
    (tmp_path / "taken").write_text("mine")
    code, _, err = run_cli("evaluate", str(data), str(sub), "-o", str(tmp_path / "taken"))
    assert code == 2 and err.count("\n") == 1 and "taken: is a file, not a folder" in err, err
    assert (tmp_path / "taken").read_text() == "mine"
