"""Render a `ScanPlan` into a `CtVolume`: anatomy, vessels, nodules, then the scanner's blur and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from noduleflow.ct import CtVolume
from noduleflow.synth.anatomy import BLOOD, render_anatomy
from noduleflow.synth.nodules import render_nodule
from noduleflow.synth.plan import ScanPlan, stream
from noduleflow.synth.shapes import Grid, blend, tube_fraction


@dataclass(frozen=True, eq=False)
class SynthScan:
    """A rendered scan: the volume (int16 HU, (I, R, C)) and its lung mask (bool, (I, R, C)), for tests and previews."""

    plan: ScanPlan
    volume: CtVolume
    lung: np.ndarray


def render_scan(plan: ScanPlan) -> SynthScan:
    """Voxels of `plan`; the same plan gives the same bytes on every machine and in every process.

    The scanner is modelled as a Gaussian point-spread function (`plan.blur_mm` in-plane, 0.4 of
    the slice spacing along z, as the slice profile) followed by white noise of `plan.noise_hu`.
    """
    grid = Grid.from_geometry(plan.shape_irc, plan.origin_xyz, plan.spacing_xyz, plan.offset_xyz)
    rng = stream(plan.seed, plan.index, "render", *plan.shape_irc)
    hu, lung = render_anatomy(plan.body, grid, rng)
    region, frac = tube_fraction(grid, plan.vessels.tubes)
    blend(hu, region, frac, BLOOD, where=lung)
    for nodule in [*plan.nodules, *plan.excluded]:
        render_nodule(hu, grid, nodule)
    sx, sy, sz = plan.spacing_xyz
    hu = gaussian_filter(hu, sigma=(0.4, plan.blur_mm / sy, plan.blur_mm / sx), truncate=3.0)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(plan.noise_hu)
    np.clip(hu, -1024, 3071, out=hu)
    volume = CtVolume(np.rint(hu).astype(np.int16), plan.origin_xyz, plan.spacing_xyz, np.eye(3), plan.series_uid)
    return SynthScan(plan, volume, lung)
