"""Candidate recall: the fraction of nodules that get at least one candidate, whatever its score.

The FROC reads sensitivity at fixed false-positive rates, so a nodule that no candidate reaches is
lost at every rate: the classifier cannot rank what the candidate stage never proposed. This is the
ceiling of the CPM, measured directly and broken down by what the misses have in common -- size
band always, and kind and site (isolated, juxta-pleural, juxta-vascular) where the data says
(`synth.truth.nodule_labels` for synthetic scans).

Recall here counts every mark the FROC scored (within its per-scan limit), so it equals the
FROC's sensitivity at its last operating point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from noduleflow.metrics.froc import Matching

SIZE_BANDS_MM = (0.0, 4.0, 6.0, 10.0, math.inf)
"""Band edges of the breakdown by diameter: < 4, 4-6, 6-10 and >= 10 mm (LUNA16 keeps nodules >= 3 mm)."""


@dataclass(frozen=True)
class RecallRow:
    """One group of nodules (e.g. group "size", value "4-6 mm") and how many of them got a candidate."""

    group: str
    value: str
    found: int
    total: int

    @property
    def recall(self) -> float:
        """found / total; a group is only listed when it holds a nodule, so total > 0."""
        return self.found / self.total


@dataclass(frozen=True)
class CandidateRecall:
    """Candidate recall over all nodules, per group, and the candidates per scan it took."""

    found: int
    total: int
    candidates_per_scan: float
    rows: tuple[RecallRow, ...]
    missed: tuple[int, ...]  # indices into Matching.nodules of the nodules no candidate reached

    @property
    def recall(self) -> float:
        """found / total, or NaN when there is no nodule at all (the caller says so)."""
        return self.found / self.total if self.total else math.nan

    def describe(self) -> str:
        if not self.total:
            return "candidate recall: no nodule in these scans"
        head = (
            f"candidate recall {self.recall:.3f} ({self.found} of {self.total} nodules get a candidate; "
            f"{self.candidates_per_scan:.1f} candidates per scan)"
        )
        lines = [head]
        for group in dict.fromkeys(row.group for row in self.rows):
            parts = [f"{r.value} {r.found}/{r.total}" for r in self.rows if r.group == group]
            lines.append(f"  by {group}: " + ", ".join(parts))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "recall": None if not self.total else self.recall,
            "found": self.found,
            "total": self.total,
            "candidates_per_scan": self.candidates_per_scan,
            "rows": [
                {"group": r.group, "value": r.value, "found": r.found, "total": r.total, "recall": r.recall}
                for r in self.rows
            ],
            "missed": list(self.missed),
        }


def size_band(diameter_mm: float) -> str:
    """The SIZE_BANDS_MM band of a diameter, as a label ("< 4 mm", "4-6 mm", ..., ">= 10 mm")."""
    edges = SIZE_BANDS_MM
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= diameter_mm < hi:
            if lo == 0:
                return f"< {hi:g} mm"
            return f">= {lo:g} mm" if math.isinf(hi) else f"{lo:g}-{hi:g} mm"
    return "unknown size"  # negative or NaN diameters


def candidate_recall(matching: Matching, *, labels: Sequence[Mapping[str, str]] | None = None) -> CandidateRecall:
    """Which of `matching`'s nodules got at least one scored mark, overall, by size band and by `labels`.

    labels: one mapping per nodule of `matching.nodules` (same order), e.g. {"kind": "solid",
    "site": "juxta-pleural"}; each key becomes a group. Groups list their values in first-seen order.
    """
    nodules = matching.nodules
    if labels is not None and len(labels) != len(nodules):
        raise ValueError(f"labels has {len(labels)} entries for {len(nodules)} nodules")
    hit = np.asarray(matching.best_mark) >= 0
    groups: dict[tuple[str, str], list[int]] = {}
    for i, nodule in enumerate(nodules):
        keys = [("size", size_band(nodule.diameter_mm))]
        keys += list(labels[i].items()) if labels is not None else []
        for key in keys:
            groups.setdefault(key, []).append(i)
    size_order = [size_band(lo) for lo in SIZE_BANDS_MM[:-1]] + ["unknown size"]
    names = list(dict.fromkeys(g for g, _ in groups))  # "size" first, then the label keys as first seen
    ordered = sorted(
        groups,
        key=lambda k: (names.index(k[0]), size_order.index(k[1]) if k[0] == "size" else 0),
    )  # stable: label values keep their first-seen order
    rows = tuple(RecallRow(g, v, int(hit[groups[(g, v)]].sum()), len(groups[(g, v)])) for g, v in ordered)
    n_scans = len(matching.series_uids)
    return CandidateRecall(
        found=int(hit.sum()),
        total=len(nodules),
        candidates_per_scan=matching.n_marks / n_scans if n_scans else 0.0,
        rows=rows,
        missed=tuple(int(i) for i in np.flatnonzero(~hit)),
    )
