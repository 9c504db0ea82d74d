"""Draw docs/pipeline.svg, the README's picture of the pipeline: python docs/pipeline_svg.py"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file that GitHub renders with its fonts
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402 - after the backend is chosen

BOXES = {  # name: (x, y, title, lines) in axes units of a 19.4 x 5.6 canvas
    "scans": (0.2, 3.4, "CT scans + CSVs", [".mhd/.raw .mha .nii.gz DICOM", "annotations.csv", "candidates_V2.csv"]),
    "prepare": (4.1, 3.4, "noduleflow prepare", ["memory-mapped int16 HU", "+ lung mask per scan"]),
    "train": (8.0, 3.4, "noduleflow train detector", ["U-Net segment -> mine", "-> classify -> malignancy"]),
    "run": (11.9, 3.4, "runs/detector", ["best.pt per part, curves,", "export/ (ONNX, int8)"]),
    "detect": (11.9, 0.4, "noduleflow detect", ["lung -> U-Net -> components", "-> classifier -> malignancy"]),
    "evaluate": (8.0, 0.4, "noduleflow evaluate", ["LUNA16 FROC, CPM", "with a 95% interval"]),
    "report": (4.1, 0.4, "noduleflow report", ["report.html: data, curves,", "FROC, findings, timings"]),
    "serve": (15.8, 1.9, "noduleflow serve", ["HTTP API", "+ web viewer"]),
}
W, H = 3.4, 2.0
ARROWS = [
    ("scans", "prepare"),
    ("prepare", "train"),
    ("train", "run"),
    ("run", "detect"),
    ("detect", "evaluate"),
    ("evaluate", "report"),
    ("run", "serve"),
]


def _anchor(a, b):
    (xa, ya), (xb, yb) = BOXES[a][:2], BOXES[b][:2]
    ca, cb = (xa + W / 2, ya + H / 2), (xb + W / 2, yb + H / 2)
    if abs(ya - yb) < 0.1:  # same row: side to side
        sign = 1 if xb > xa else -1
        return (ca[0] + sign * W / 2, ca[1]), (cb[0] - sign * W / 2, cb[1])
    if abs(xa - xb) < 0.1:  # same column: bottom to top
        return (ca[0], ya), (cb[0], yb + H)
    return (xa + W, ca[1]), (xb + W / 2, yb + H)


def main() -> None:
    fig, ax = plt.subplots(figsize=(19.5, 6), dpi=72)
    ax.set_xlim(0, 19.4)
    ax.set_ylim(0, 5.6)
    ax.axis("off")
    for name, (x, y, title, lines) in BOXES.items():
        colour = "#dbe9f6" if name in ("scans", "run") else "#fdf1d6"
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.05", fc=colour, ec="#33475b", lw=1.5))
        ax.text(
            x + W / 2, y + H - 0.45, title, ha="center", va="center", fontsize=12.5, weight="bold", family="monospace"
        )
        for k, line in enumerate(lines):
            ax.text(x + W / 2, y + H - 1.0 - 0.38 * k, line, ha="center", va="center", fontsize=10.5)
    for a, b in ARROWS:
        start, end = _anchor(a, b)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=20, lw=1.8, color="#33475b"))
    fig.savefig(Path(__file__).with_name("pipeline.svg"), format="svg", bbox_inches="tight", metadata={"Date": None})


if __name__ == "__main__":
    main()
