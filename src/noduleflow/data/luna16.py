"""The LUNA16 index: which scans lie on disk, their candidates and nodules, and splits by series.

Reads a data folder in the LUNA16 layout (the real download or `noduleflow synth` output)::

    subset0/<seriesuid>.mhd (+ .raw)   ... subset9/
    annotations.csv                    seriesuid,coordX,coordY,coordZ,diameter_mm
    candidates.csv                     seriesuid,coordX,coordY,coordZ,class   (or candidates_V2.csv)
    annotations_with_malignancy.csv    ... + mal_bool                          (optional)
    annotations_excluded.csv           same columns as annotations.csv         (optional)

Coordinates are world millimetres ordered X, Y, Z. Rows whose series is not on disk are skipped
with one warning per file that counts them (normal when only some subsets are downloaded).
Splits are always by series, never by candidate: candidates of one scan are strongly correlated,
and a scan seen in training must not score the validation set.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from noduleflow.data.hit_rule import hits
from noduleflow.errors import CsvError, ScanError

SCAN_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii")
_SUBSET = re.compile(r"^subset(\d+)$")
_XYZ = ("coordX", "coordY", "coordZ")
MAX_DIAMETER_MM = 150.0
"""Largest diameter a CSV may give: half a chest. A larger one (or infinity) would turn any mark in the scan into a hit."""


class Nodule(NamedTuple):
    """One annotated nodule: centre in world mm (X, Y, Z), diameter in mm, malignancy if known."""

    series_uid: str
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    malignant: bool | None = None


class Candidate(NamedTuple):
    """One LUNA16 candidate location.

    `diameter_mm` is the matched annotation's diameter for class-1 candidates (0.0 for negatives
    and for positives with no annotation within its radius); `malignant` comes from the same
    annotation when `annotations_with_malignancy.csv` exists, else None. `weight`: how many times
    as often as a candidates.csv row a balanced training epoch draws it (`load_index`'s extra_weight).
    """

    series_uid: str
    center_xyz: tuple[float, float, float]
    is_nodule: bool
    diameter_mm: float = 0.0
    malignant: bool | None = None
    weight: int = 1


class Split(NamedTuple):
    """Series UIDs per split; the three sets are disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()


@dataclass(frozen=True)
class Luna16Index:
    """Everything known about a LUNA16-layout folder, restricted to the series present on disk.

    scans:      series UID -> scan file (subsetN/<uid>.mhd).
    folds:      series UID -> N of its subsetN folder (recorded only: splits are random by series, `split`).
    candidates: candidates.csv joined with the annotations (see `Candidate`).
    nodules:    annotated nodules (from annotations_with_malignancy.csv when present).
    excluded:   annotations_excluded.csv rows (findings that count neither as hit nor as miss).
    skipped:    CSV file name -> rows skipped because their series is not on disk.
    """

    root: Path
    scans: dict[str, Path]
    folds: dict[str, int]
    candidates: tuple[Candidate, ...]
    nodules: tuple[Nodule, ...]
    excluded: tuple[Nodule, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def series_uids(self) -> tuple[str, ...]:
        """All series on disk, sorted."""
        return tuple(sorted(self.scans))

    def split(self, *, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0) -> Split:
        """A random split by series, the same for the same seed, stratified by `series_strata` (see `split_series`)."""
        return split_series(
            self.series_uids,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            strata=series_strata(self.nodules),
        )

    def candidates_of(self, series_uids: Iterable[str], *, keep_excluded: bool = True) -> tuple[Candidate, ...]:
        """The candidates whose series is in `series_uids`, in index order.

        keep_excluded=False leaves out non-nodule candidates that lie on an excluded finding
        (closer to its centre than its radius, the rule the LUNA16 evaluation ignores marks by).
        """
        keep = set(series_uids)
        chosen = tuple(c for c in self.candidates if c.series_uid in keep)
        if keep_excluded or not self.excluded:
            return chosen
        on_excluded = on_findings(
            [c.series_uid for c in chosen], np.array([c.center_xyz for c in chosen]).reshape(-1, 3), self.excluded
        )
        return tuple(c for c, on in zip(chosen, on_excluded) if c.is_nodule or not on)

    def nodules_of(self, series_uids: Iterable[str]) -> tuple[Nodule, ...]:
        """The annotated nodules whose series is in `series_uids`, in index order."""
        keep = set(series_uids)
        return tuple(n for n in self.nodules if n.series_uid in keep)


def on_findings(series_uids: Sequence[str], points_xyz: np.ndarray, findings: Sequence[Nodule]) -> np.ndarray:
    """(N,) bool: which points hit a finding of their own series (`hit_rule.hits`: closer than its radius)."""
    hit = np.zeros(len(series_uids), dtype=bool)
    by_series: dict[str, list[int]] = {}
    for i, uid in enumerate(series_uids):
        by_series.setdefault(uid, []).append(i)
    for uid, rows in by_series.items():
        mine = [f for f in findings if f.series_uid == uid]
        if mine:
            centres = np.array([f.center_xyz for f in mine])  # (F, 3)
            hit[rows] = hits(centres, [f.diameter_mm for f in mine], points_xyz[rows]).any(axis=0)  # (n,)
    return hit


def find_scans(root: str | Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Scan files under `root`/subset*/ -> ({series UID: path}, {series UID: subset number})."""
    root = Path(root)
    if not root.is_dir():
        raise ScanError(
            "is not a folder", path=root, fix="Pass the LUNA16 data folder (holding subset0/, annotations.csv, ...)."
        )
    scans: dict[str, Path] = {}
    folds: dict[str, int] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET.match(p.name)):
        for path in sorted(folder.iterdir()):
            uid = _series_uid(path)
            if uid is None:
                continue
            if uid in scans:
                raise ScanError(
                    f"series {uid} lies in two places: {scans[uid]} and {path}",
                    path=root,
                    fix="Keep one copy of each scan.",
                )
            scans[uid] = path
            folds[uid] = int(_SUBSET.match(folder.name).group(1))  # type: ignore[union-attr]
    return scans, folds


def load_index(root: str | Path, *, extra_candidates: Iterable[str | Path] = (), extra_weight: int = 1) -> Luna16Index:
    """Read the CSVs of a LUNA16-layout folder and join them, keeping only the series on disk.

    extra_candidates: more CSVs in candidates.csv's format (e.g. mined by `recipes.mining`), whose
    rows are appended to candidates.csv's and joined to the annotations the same way, each with
    `weight` = extra_weight.
    """
    root = Path(root)
    scans, folds = find_scans(root)
    if not scans:
        raise ScanError(
            "holds no scans under subset*/",
            path=root,
            fix="Download LUNA16 into it (subset0/ ... subset9/) or run `noduleflow synth` into it.",
        )
    skipped: dict[str, int] = {}

    annotations = read_nodules(require_file(root, "annotations.csv"), scans, skipped)
    malignancy_csv = root / "annotations_with_malignancy.csv"
    nodules = read_nodules(malignancy_csv, scans, skipped, malignancy=True) if malignancy_csv.exists() else annotations
    excluded_csv = root / "annotations_excluded.csv"
    excluded = read_nodules(excluded_csv, scans, skipped, excluded=True) if excluded_csv.exists() else ()
    candidates = _read_candidates(_candidates_csv(root), scans, nodules, skipped)
    for path in map(Path, extra_candidates):
        if not path.is_file():
            raise CsvError(
                "is missing",
                path=path,
                fix="Each classify.extra_candidates entry must be a CSV with the columns "
                "seriesuid,coordX,coordY,coordZ,class (as candidates.csv).",
            )
        candidates += tuple(
            c._replace(weight=int(extra_weight)) for c in _read_candidates(path, scans, nodules, skipped)
        )
    return Luna16Index(root, scans, folds, candidates, nodules, excluded, skipped)


def split_series(
    series_uids: Iterable[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    strata: Mapping[str, str] | None = None,
) -> Split:
    """Shuffle the series with `seed` and cut them into train / val / test.

    Deterministic: the sorted UIDs are permuted by `np.random.default_rng(seed)`, so the split does
    not depend on the order of the input. A non-zero fraction gets at least one series whenever
    that still leaves one for training.
    strata: series UID -> label (e.g. `series_strata`: "" for a series without nodules, absent counts as "").
    Each label is then spread over the parts in proportion; training gets a series of every non-empty
    label, then val one of every non-empty label that training (or else test) can spare, then test: without
    a nodule in validation, AP, AUC and the best epoch are undefined. The parts keep their sizes.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum below 1"
        )
    uids = sorted(set(series_uids))
    rng = np.random.default_rng(seed)
    n_val, n_test = (_count(len(uids), f) for f in (val_fraction, test_fraction))
    while n_val + n_test >= len(uids) and n_val + n_test > 0:
        n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)
    if strata is None:
        order = [uids[i] for i in rng.permutation(len(uids))]
        val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
        return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))
    label = {uid: strata.get(uid, "") or "" for uid in uids}
    order = _stratified_order(uids, label, rng)
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    coarse = {uid: "nodule" if name else "" for uid, name in label.items()}
    for labels, guard in ((coarse, False), (label, True)):  # "has nodules" first, then the finer labels
        for wanted in sorted(set(labels.values()) - {""}):  # training first: a label it never sees cannot be learned
            _move_one(train, val, wanted, labels, keep=0, guard=guard)
            _move_one(train, test, wanted, labels, keep=0, guard=guard)
            _move_one(val, train, wanted, labels, keep=1, guard=guard)
            # validation picks the best epoch: it comes before test, even when test then keeps no labelled series
            _move_one(val, test, wanted, labels, keep=0, guard=False)
            _move_one(test, train, wanted, labels, keep=1, guard=guard)
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def series_strata(nodules: Iterable[Nodule]) -> dict[str, str]:
    """Series UID -> "malignant" (a malignant nodule), "benign" (labelled nodules, none malignant) or "nodule"
    (nodules without labels); series without nodules are absent. What `split_series` stratifies by."""
    kinds: dict[str, set[bool | None]] = {}
    for nodule in nodules:
        kinds.setdefault(nodule.series_uid, set()).add(nodule.malignant)
    return {
        uid: "malignant" if True in found else "benign" if False in found else "nodule" for uid, found in kinds.items()
    }


def _stratified_order(uids: list[str], label: dict[str, str], rng: np.random.Generator) -> list[str]:
    """All series, each label's members shuffled and spaced evenly over [0, 1) from a random offset, then merged:
    any prefix of the order holds each label in proportion (systematic sampling per label)."""
    keys: dict[str, float] = {}
    for name in sorted(set(label.values())):
        members = [uid for uid in uids if label[uid] == name]
        offset = rng.random()
        for rank, i in enumerate(rng.permutation(len(members))):
            keys[members[i]] = (rank + offset) / len(members)
    return sorted(uids, key=lambda uid: (keys[uid], uid))


def _move_one(
    into: list[str], source: list[str], wanted: str, label: dict[str, str], *, keep: int, guard: bool
) -> None:
    """If `into` holds no series labelled `wanted` and `source` holds more than `keep`, swap `source`'s first one
    into `into` (both in place); `into` gives back its last series of the label it holds most of (the empty label
    on a tie), never its only one of a non-empty label. guard: nor may `source` be left without any labelled
    series when it had one (the finer labels keep what the "has nodules" pass gave each part)."""
    spare = [uid for uid in source if label[uid] == wanted]
    if not into or len(spare) <= keep or any(label[uid] == wanted for uid in into):
        return
    held = {name: sum(label[uid] == name for uid in into) for name in {label[uid] for uid in into}}
    donors = [name for name, n in held.items() if name == "" or n >= 2]
    if guard and sum(bool(label[uid]) for uid in source) == 1:
        donors = [name for name in donors if name]
    if not donors:
        return
    donor = max(donors, key=lambda name: (held[name], name == "", name))
    back = [uid for uid in into if label[uid] == donor][-1]
    into[into.index(back)] = spare[0]
    source[source.index(spare[0])] = back


def _count(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(n * fraction))


def _series_uid(path: Path) -> str | None:
    """The scan file's name without its suffix; the suffix in any case, as `read_volume` reads it (.MHD, .NII.GZ)."""
    for suffix in SCAN_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix) and path.is_file():
            return path.name[: -len(suffix)]
    return None


def require_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise CsvError(
            "is missing",
            path=path,
            fix="Put the LUNA16 CSVs next to the subset*/ folders (or rerun `noduleflow synth`).",
        )
    return path


def _candidates_csv(root: Path) -> Path:
    for name in ("candidates.csv", "candidates_V2.csv", "candidates_V2/candidates_V2.csv"):
        if (root / name).is_file():
            return root / name
    return require_file(root, "candidates.csv")


def read_csv(path: Path, columns: tuple[str, ...]):
    """The CSV as a pandas frame with `columns` checked; UIDs stay strings (never parsed as numbers).

    Every row must name its series and hold numbers in the other `columns` (except mal_bool, parsed
    by its reader); coordinates (coordX, coordY, coordZ) must be finite. Anything else is a
    `CsvError` naming the file, the first bad row (1-based, the header being row 1) and the fix.
    """
    import pandas as pd

    try:  # index_col=False + the warning as an error: a row with a field too many is an error, not a silent
        # shift of every column (pandas' default when every row has one) nor a silently dropped cell
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype={"seriesuid": str}, skipinitialspace=True, index_col=False)
    except pd.errors.ParserWarning:
        raise CsvError(
            f"row {_long_row(path)} has more cells than the header has columns",
            path=path,
            fix="Fix or delete that row (a stray comma?).",
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CsvError(
            f"cannot be parsed as CSV ({detail})", path=path, fix="Restore the file from the LUNA16 download."
        ) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CsvError(
            f"lacks the column(s) {', '.join(missing)} (it has {', '.join(map(str, frame.columns))})",
            path=path,
            fix=f"Use a LUNA16 CSV with the header {','.join(columns)}.",
        )
    if "seriesuid" in columns:
        uids = frame["seriesuid"].astype("string").str.strip()  # a stray space must not make a series unknown
        _reject(path, (uids.isna() | (uids == "")).to_numpy(), "has no seriesuid")
        frame["seriesuid"] = uids.astype(object)
    for column in columns[1:]:
        if column == "mal_bool":
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            cell = frame[column].iloc[bad[0]]
            what = f"an empty or NaN {column}" if pd.isna(cell) else f"a non-numeric {column} {cell!r}"
            raise CsvError(f"row {bad[0] + 2} has {what}", path=path, fix="Fix or delete that row.")
        frame[column] = values.astype(np.float64)
        if column in _XYZ:
            _reject(
                path,
                ~np.isfinite(frame[column].to_numpy()),
                f"has an infinite {column}",
                fix="Write the position in world millimetres (finite numbers), or delete that row.",
            )
    return frame


def _long_row(path: Path) -> int | str:
    """The 1-based number of the first row with more cells than the header ("?" if the csv module sees none)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh, skipinitialspace=True)
        width = len(next(rows, []))
        return next((k for k, row in enumerate(rows, start=2) if len(row) > width), "?")


def _reject(path: Path, bad: np.ndarray, what: str, fix: str = "Fix or delete that row.") -> None:
    """CsvError for the first True of `bad` (a (K,) mask over the data rows), naming its row as a spreadsheet does."""
    rows = np.flatnonzero(bad)
    if rows.size:
        more = f" (and {rows.size - 1} more row(s))" if rows.size > 1 else ""
        raise CsvError(f"row {rows[0] + 2} {what}{more}", path=path, fix=fix)


def _on_disk(frame, path: Path, scans: dict[str, Path], skipped: dict[str, int]):
    """Drop rows whose series has no scan file; count them and warn once per file."""
    known = frame["seriesuid"].isin(scans.keys()).to_numpy()
    if not known.all():
        n_rows, n_series = int((~known).sum()), frame["seriesuid"][~known].nunique()
        skipped[path.name] = n_rows
        warnings.warn(
            f"{path}: skipped {n_rows} row(s) of {n_series} series not found under subset*/ "
            "(expected when only some subsets are on disk)",
            stacklevel=4,
        )
    return frame[known]


def read_nodules(
    path: Path, scans: dict[str, Path], skipped: dict[str, int], *, malignancy: bool = False, excluded: bool = False
) -> tuple[Nodule, ...]:
    """Rows of annotations.csv (or its malignancy or excluded variant) whose series is in `scans`.

    diameter_mm must be in (0, MAX_DIAMETER_MM]: a diameter of 0 makes a mark on the centre miss and
    an infinite one makes every mark hit. `excluded`: annotations_excluded.csv, where a negative
    diameter (LUNA16 writes -1) means "size unknown" (read as `hit_rule.UNKNOWN_DIAMETER_MM` when matching).
    """
    columns = ("seriesuid", *_XYZ, "diameter_mm") + (("mal_bool",) if malignancy else ())
    frame = read_csv(path, columns)
    d = frame["diameter_mm"].to_numpy()
    unknown = (d < 0) & np.isfinite(d) if excluded else np.zeros(len(d), bool)
    fix = (
        f"Write the diameter in mm (above 0, at most {MAX_DIAMETER_MM:g})"
        + (", or -1 for an unknown size" if excluded else "")
        + "."
    )
    bad = ~unknown & ~((d > 0) & (d <= MAX_DIAMETER_MM))
    _reject(
        path, bad, f"has diameter_mm {_describe(d[bad][0]) if bad.any() else ''}, which is not a nodule's size", fix=fix
    )
    frame = _on_disk(frame, path, scans, skipped)
    mal = [_parse_bool(v, path) for v in frame["mal_bool"]] if malignancy else [None] * len(frame)
    xyz = frame[list(_XYZ)].to_numpy(np.float64).tolist()
    return tuple(
        Nodule(uid, tuple(c), float(d), m) for uid, c, d, m in zip(frame["seriesuid"], xyz, frame["diameter_mm"], mal)
    )


def _describe(value: float) -> str:
    return "infinite" if np.isinf(value) else "zero" if value == 0 else f"{value:g}"


def _read_candidates(
    path: Path, scans: dict[str, Path], nodules: tuple[Nodule, ...], skipped: dict[str, int]
) -> tuple[Candidate, ...]:
    """Candidates with the diameter (and malignancy) of the nearest annotation for class-1 rows.

    As in "Deep Learning with PyTorch" ch. 10, only a class-1 candidate close to an annotation gets
    its diameter; "close" here means within the annotation's radius of its centre.
    """
    frame = read_csv(path, ("seriesuid", *_XYZ, "class"))
    _reject(
        path,
        ~np.isin(frame["class"].to_numpy(), (0, 1)),
        "has a class other than 0 or 1",
        fix="Use 1 for nodules and 0 for non-nodules.",
    )
    frame = _on_disk(frame, path, scans, skipped)
    by_series: dict[str, list[Nodule]] = {}
    for nodule in nodules:
        by_series.setdefault(nodule.series_uid, []).append(nodule)
    xyz = frame[list(_XYZ)].to_numpy(np.float64)
    out = []
    for uid, center, cls in zip(frame["seriesuid"], xyz.tolist(), frame["class"].to_numpy()):
        if cls not in (0, 1):
            raise CsvError(
                f"has class {cls} for series {uid}", path=path, fix="Use 1 for nodules and 0 for non-nodules."
            )
        if cls == 0:
            out.append(Candidate(uid, tuple(center), False))
            continue
        match = nearest(center, by_series.get(uid, ()))
        out.append(Candidate(uid, tuple(center), True, *(match[2:] if match else (0.0, None))))
    return tuple(out)


def nearest(center: list[float], nodules: Iterable[Nodule]) -> Nodule | None:
    """The nodule that `center` (mm, X, Y, Z) hits (`hit_rule.hits`) whose centre is closest; None if it hits none."""
    nodules = list(nodules)
    if not nodules:
        return None
    centres = np.array([n.center_xyz for n in nodules])  # (F, 3)
    hit = hits(centres, [n.diameter_mm for n in nodules], [center])[:, 0]  # (F,)
    if not hit.any():
        return None
    d2 = np.where(hit, ((centres - np.asarray(center, dtype=np.float64)) ** 2).sum(axis=1), np.inf)
    return nodules[int(d2.argmin())]


def _parse_bool(value, path: Path) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return True
    if text in ("false", "0", "0.0", "no"):
        return False
    raise CsvError(f"has mal_bool {value!r}", path=path, fix="Use True/False (or 1/0) in the mal_bool column.")
