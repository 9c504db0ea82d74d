"""The report's "training" section: loss and validation scores per epoch of each part, drawn from metrics.jsonl.

Drawn here into PNG bytes rather than copied from curves.png, which a run only draws when it
closes (an interrupted run has none) and whose look the report does not control.
"""

from __future__ import annotations

import math
from typing import Any

from noduleflow.report import html
from noduleflow.report.inputs import RunInfo

_SCORES = ("accuracy", "precision", "recall", "f1", "f1_best", "ap", "auc", "dice")  # val_<name>, in [0, 1]


def curves_section(run: RunInfo) -> str:
    """One figure (loss | validation scores) and the last epoch's numbers for each part of the run."""
    from noduleflow.train.runlog import read_metrics

    if not run.parts:
        return html.note(
            "The run holds no trained part (segment/, classify/, malignancy/): train it with `noduleflow train`."
        )
    body = ""
    for name, folder in run.parts.items():
        records = read_metrics(folder / "metrics.jsonl")
        body += f"<h3>{html.esc(name)}</h3>"
        if not records:
            body += html.note(
                f"{name}: no metrics.jsonl with an epoch in {folder} (the part has not finished an epoch)."
            )
            continue
        body += html.image(plot(records, name), f"training curves of {name}", f"{name}: {len(records)} epoch(s)")
        last = records[-1]
        shown = [
            (k, v) for k, v in last.items() if k not in ("epoch", "step") and isinstance(v, (int, float, type(None)))
        ]
        body += html.table(
            ("last epoch", *[k for k, _ in shown]),
            [(last.get("epoch"), *["no positive in validation" if v is None else html.number(v, 4) for _, v in shown])],
        )
    return body


def plot(records: list[dict[str, Any]], name: str) -> bytes:
    """Two panels, PNG bytes: train/val loss per epoch; the logged validation scores per epoch."""
    from matplotlib.figure import Figure  # no pyplot: no global state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.2))
    loss_ax, score_ax = fig.subplots(1, 2)
    for key, ax in [("train_loss", loss_ax), ("val_loss", loss_ax)] + [(f"val_{s}", score_ax) for s in _SCORES]:
        points = [(r["epoch"], _value(r.get(key))) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=key.removeprefix("val_") if ax is score_ax else key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title=f"{name}: loss")
    score_ax.set(xlabel="epoch", ylabel="score", title=f"{name}: validation", ylim=(0, 1.02))
    for ax in (loss_ax, score_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return html.figure_png(fig)


def _value(v: object) -> float:
    """A plotted number; NaN (a gap) for null, text or infinity (metrics.jsonl is read as untrusted)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan
