"""Shared synthetic data for the synth tests: made once per session, at half resolution where voxels don't matter."""

from __future__ import annotations

import pytest

from noduleflow.synth import plan_scan, render_scan, synthesize

SEED = 11
ARGS = dict(scans=3, seed=SEED, size="small", subsets=2, scale=0.5, progress=False)


@pytest.fixture(scope="session")
def synth_args() -> dict:
    """The arguments of `dataset` (without workers): 3 half-resolution scans in 2 subsets."""
    return dict(ARGS)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, synth_args):
    """(summary, folder) of the `synth_args` scans, made in this process (workers=1)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, workers=1, **synth_args), out


@pytest.fixture(scope="session")
def rendered():
    """Full-resolution small scans with 8 nodules of several kinds and all three sites, and their lung masks."""
    return [render_scan(plan_scan(5, i, "small")) for i in (3, 5, 7)]
