"""Every CSV reader (annotations, excluded, malignancy, candidates, the submission) either parses a CSV into
values that score correctly or raises `CsvError` naming the file and the row: never another exception, never
a diameter of 0 or infinity, an infinite coordinate, or a probability outside [0, 1] that silently changes a score."""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noduleflow.data.luna16 import MAX_DIAMETER_MM, _read_candidates, read_nodules
from noduleflow.errors import CsvError
from noduleflow.evaluate import read_detections, read_submission

UIDS = ("1.2.3", "1.2.4")
SCANS = {uid: Path(f"{uid}.mhd") for uid in UIDS}
HEADERS = {
    "annotations": "seriesuid,coordX,coordY,coordZ,diameter_mm",
    "excluded": "seriesuid,coordX,coordY,coordZ,diameter_mm",
    "malignancy": "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool",
    "candidates": "seriesuid,coordX,coordY,coordZ,class",
    "submission": "seriesuid,coordX,coordY,coordZ,probability",
}


def _read(kind: str, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows of series not on disk
        if kind == "candidates":
            return _read_candidates(path, SCANS, (), {})
        if kind == "submission":
            return read_submission(path)
        return read_nodules(path, SCANS, {}, malignancy=kind == "malignancy", excluded=kind == "excluded")


def _check_parsed(kind: str, rows) -> None:
    """What a parse that did not raise must hold for the FROC to be right."""
    for row in rows:
        uid = row.series_uid
        assert isinstance(uid, str) and uid.strip() == uid and uid
        assert all(isinstance(v, float) and math.isfinite(v) for v in row.center_xyz)
        if kind in ("annotations", "malignancy"):
            assert 0 < row.diameter_mm <= MAX_DIAMETER_MM
        elif kind == "excluded":
            assert (0 < row.diameter_mm <= MAX_DIAMETER_MM) or (row.diameter_mm < 0 and math.isfinite(row.diameter_mm))
        elif kind == "submission":
            assert 0 <= row.probability <= 1 and (row.malignancy is None or 0 <= row.malignancy <= 1)


def _write(text: str) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / "file.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if text.isprintable() else path.write_bytes(
        text.encode("utf-8", "surrogatepass")
    )
    return path


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "NaN",
            "Infinity",
            "1e400",
            "-1",
            "0",
            "0.0",
            "-0",
            "0.5",
            "1",
            "2",
            "1.5",
            "",
            " ",
            "True",
            "False",
            "1,2",
        ]
    ),
)
_garbage = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_cell = st.one_of(_number, _number, _garbage, st.sampled_from([*UIDS, " 1.2.3", '"1.2.3"', '"a,b"', '"', "\x00"]))
_row = st.lists(_cell, min_size=0, max_size=8).map(",".join)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(HEADERS)),
    extra=st.lists(st.sampled_from(["note", "malignancy", "class", "coordX"]), max_size=2),
    rows=st.lists(_row, max_size=6),
    shuffle=st.randoms(),
)
def test_random_csv_content_parses_right_or_is_a_csv_error(kind, extra, rows, shuffle):
    columns = HEADERS[kind].split(",") + extra
    shuffle.shuffle(columns)
    path = _write("\n".join([",".join(columns), *rows]) + "\n")
    try:
        parsed = _read(kind, path)
    except CsvError as err:
        assert str(path) in err.message
        return
    _check_parsed(kind, parsed)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(sorted(HEADERS)),
    values=st.lists(st.lists(_number, min_size=5, max_size=6), min_size=1, max_size=5),
)
def test_rows_of_random_numbers_parse_right_or_name_their_row(kind, values):
    """Well-formed rows of the right width with random numbers (nan, inf, 0, negatives, huge): the error names a row."""
    header = HEADERS[kind].split(",")
    lines = [",".join([UIDS[k % 2], *(v + ["0"] * 6)[: len(header) - 1]]) for k, v in enumerate(values)]
    path = _write("\n".join([",".join(header), *lines]) + "\n")
    try:
        parsed = _read(kind, path)
    except CsvError as err:
        assert str(path) in err.message and any(w in err.message for w in ("row ", "line ", "mal_bool")), err.message
        return
    _check_parsed(kind, parsed)
    assert len(parsed) == len(values)


@pytest.mark.parametrize(
    "kind, row, words",
    [
        ("annotations", "1.2.3,1,2,3,inf", ["row 2", "diameter_mm infinite"]),
        ("annotations", "1.2.3,1,2,3,0", ["row 2", "diameter_mm zero"]),
        ("annotations", "1.2.3,1,2,3,-1", ["row 2", "diameter_mm -1"]),
        ("annotations", "1.2.3,1,2,3,1e6", ["row 2", "diameter_mm 1e+06"]),
        ("annotations", "1.2.3,inf,2,3,5", ["row 2", "infinite coordX"]),
        ("annotations", "1.2.3,1,-inf,3,5", ["row 2", "infinite coordY"]),
        ("annotations", "1.2.3,1,2,,5", ["row 2", "empty or NaN coordZ"]),
        ("annotations", ",1,2,3,5", ["row 2", "no seriesuid"]),
        ("annotations", "1.2.3,1,2,3,5,extra", ["row 2", "more cells than the header"]),
        ("excluded", "1.2.3,1,2,3,0", ["row 2", "zero", "-1 for an unknown size"]),
        ("excluded", "1.2.3,1,2,3,-inf", ["row 2", "infinite"]),
        ("malignancy", "1.2.3,1,2,3,nan,True", ["row 2", "empty or NaN diameter_mm"]),
        ("candidates", "1.2.3,1,2,nan,1", ["row 2", "empty or NaN coordZ"]),
        ("candidates", "1.2.3,1,2,3,inf", ["row 2", "class other than 0 or 1"]),
        ("submission", "1.2.3,1,2,3,nan", ["row 2", "empty or NaN probability"]),
        ("submission", "1.2.3,1,2,3,1.5", ["row 2", "probability 1.5, outside [0, 1]"]),
        ("submission", "1.2.3,1,2,3,-0.1", ["row 2", "outside [0, 1]"]),
        ("submission", "1.2.3,1e999,2,3,0.5", ["row 2", "infinite coordX"]),
    ],
)
def test_a_bad_value_names_the_file_the_row_and_the_fix(tmp_path, kind, row, words):
    path = tmp_path / f"{kind}.csv"
    path.write_text(f"{HEADERS[kind]}\n{row}\n")
    with pytest.raises(CsvError) as err:
        _read(kind, path)
    assert str(path) in err.value.message and all(w in err.value.message for w in words), err.value.message
    assert err.value.fix


def test_excluded_findings_of_unknown_size_and_padded_uids_are_kept(tmp_path):
    path = tmp_path / "excluded.csv"
    path.write_text(f"{HEADERS['excluded']}\n 1.2.3 ,1,2,3,-1\n1.2.4,1,2,3,4.5\n")
    assert [(n.series_uid, n.diameter_mm) for n in _read("excluded", path)] == [("1.2.3", -1.0), ("1.2.4", 4.5)]


def test_a_submission_malignancy_outside_0_1_is_an_error_and_empty_is_none(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,probability,malignancy\n1.2.3,1,2,3,0.5,\n1.2.3,1,2,3,0.5,0.2\n")
    assert [m.malignancy for m in read_submission(path)] == [None, 0.2]
    path.write_text("seriesuid,coordX,coordY,coordZ,probability,malignancy\n1.2.3,1,2,3,0.5,inf\n")
    with pytest.raises(CsvError, match="row 2 has malignancy inf"):
        read_submission(path)


@pytest.mark.parametrize(
    "finding, words",
    [
        ('{"coordX": 1, "coordY": 2, "coordZ": Infinity, "probability": 0.5}', "non-finite coordinate"),
        ('{"coordX": 1, "coordY": 2, "coordZ": 3, "probability": NaN}', "outside [0, 1]"),
        ('{"coordX": 1, "coordY": 2, "coordZ": 3, "probability": 1.01}', "outside [0, 1]"),
        ('{"coordX": 1, "coordY": 2, "coordZ": 3, "probability": 0.5, "malignancy": -1}', "outside [0, 1]"),
        ('{"coordX": "1", "coordY": 2, "coordZ": 3, "probability": 0.5}', "lacks a numeric"),
        ('{"coordX": true, "coordY": 2, "coordZ": 3, "probability": 0.5}', "lacks a numeric"),
        ('{"coordX": 1e999999, "coordY": 2, "coordZ": 3, "probability": 0.5}', "non-finite coordinate"),
    ],
)
def test_a_bad_detections_json_value_is_an_error(tmp_path, finding, words):
    path = tmp_path / "d.json"
    path.write_text('{"scans": [{"seriesuid": "1.2.3", "findings": [' + finding + "]}]}")
    with pytest.raises(CsvError) as err:
        read_detections(path)
    assert str(path) in err.value.message and words in err.value.message


@settings(max_examples=150, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "scans",
                        "seriesuid",
                        "findings",
                        "coordX",
                        "coordY",
                        "coordZ",
                        "probability",
                        "malignancy",
                        "complete",
                    ]
                ),
                children,
                max_size=6,
            )
        ),
        max_leaves=25,
    )
)
def test_any_json_document_parses_right_or_is_a_csv_error(doc):
    import json

    folder = Path(tempfile.mkdtemp())
    path = folder / "d.json"
    path.write_text(json.dumps(doc))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            marks = read_detections(path)
    except CsvError as err:
        assert str(path) in err.message
        return
    _check_parsed("submission", marks)


def test_a_json_nested_too_deeply_is_a_csv_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CsvError, match="nested too deeply"):
        read_detections(path)


def test_a_detections_json_of_an_unfinished_run_is_read_with_a_warning(tmp_path):
    path = tmp_path / "detections.json"
    path.write_text(
        '{"format": 2, "complete": false, "scans": [{"seriesuid": "1.2.3", "findings": '
        '[{"coordX": 1, "coordY": 2, "coordZ": 3, "probability": 0.5, "malignancy": null}]}]}'
    )
    with pytest.warns(UserWarning, match="has not finished"):
        marks = read_detections(path)
    assert [(m.series_uid, m.center_xyz, m.probability, m.malignancy) for m in marks] == [
        ("1.2.3", (1.0, 2.0, 3.0), 0.5, None)
    ]
