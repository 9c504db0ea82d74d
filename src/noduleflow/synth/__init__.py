"""Synthetic chest CT in the LUNA16 layout: the built-in data of the demo and of every test.

`synthesize(out, scans=..., seed=...)` writes subsetN/<seriesuid>.mhd/.raw and the LUNA16 CSVs.
For ground truth without files, `plan_scan(seed, index)` gives one scan's nodules, findings and
candidates (no voxels, a fraction of a second), and `render_scan(plan)` its voxels and lung mask.
"""

from noduleflow.synth.generate import SynthSummary, synthesize
from noduleflow.synth.nodules import KINDS, SITES, Nodule
from noduleflow.synth.plan import SIZES, ScanPlan, plan_scan, series_uid
from noduleflow.synth.scan import SynthScan, render_scan

__all__ = [
    "synthesize",
    "SynthSummary",
    "plan_scan",
    "render_scan",
    "ScanPlan",
    "SynthScan",
    "Nodule",
    "series_uid",
    "KINDS",
    "SITES",
    "SIZES",
]
