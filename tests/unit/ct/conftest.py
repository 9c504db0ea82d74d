"""Small CT volumes with an oblique (rotated, non-axis-aligned) placement, shared by the ct tests."""

from __future__ import annotations

import numpy as np
import pytest
from ct_geometry_helpers import rotation

from noduleflow.ct import CtVolume


@pytest.fixture
def oblique_direction() -> np.ndarray:
    return rotation([1.0, 2.0, 3.0], 0.4)


@pytest.fixture
def oblique_volume(oblique_direction) -> CtVolume:
    """(5, 6, 7) int16 HU over the full CT range, anisotropic spacing, non-round origin."""
    rng = np.random.default_rng(7)
    hu = rng.integers(-1024, 3072, size=(5, 6, 7)).astype(np.int16)
    hu[0, 0, 0], hu[-1, -1, -1] = -32768, 32767  # the int16 extremes must survive too
    return CtVolume(hu, [-123.25, 45.5, -300.125], [0.7, 0.8, 2.5], oblique_direction, series_uid="scan")
