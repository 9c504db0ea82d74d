"""The plan of one synthetic scan: patient, scanner geometry, ground truth; everything but the voxels.

A scan is fixed by (seed, index, size, scale). Each part draws from its own random stream derived
from (seed, index, part), so scans are independent of each other (they can be made in any order,
in parallel) and the patient (body, vessels, nodules, candidates) is the same at both sizes:
`full` and `small` image one patient at two resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.errors import ConfigError
from noduleflow.synth.body import Body, sample_body
from noduleflow.synth.candidates import sample_candidates
from noduleflow.synth.nodules import Nodule
from noduleflow.synth.placement import place_excluded, place_nodules
from noduleflow.synth.vessels import VesselTree, grow_vessels

UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # the LIDC-IDRI / LUNA16 series UID prefix


@dataclass(frozen=True)
class SizeSpec:
    """In-plane voxel counts to choose from, in-plane spacing range (mm) at 512 voxels, and the slice rule."""

    in_plane: tuple[int, ...]
    slices: tuple[int, int] | None  # small: a slice count range; full: None (count follows the thickness)
    thickness: tuple[float, ...]  # full: slice spacings (mm) to draw from, as on real scanners


SIZES = {
    "small": SizeSpec(in_plane=(192, 224, 256), slices=(100, 140), thickness=()),
    "full": SizeSpec(in_plane=(512,), slices=None, thickness=(0.625, 0.7, 0.8, 1.0, 1.25, 1.25, 1.5, 2.0, 2.5, 2.5)),
}
_STREAMS = {"body": 1, "geometry": 2, "vessels": 3, "nodules": 4, "candidates": 5, "render": 6, "uid": 7}


def stream(seed: int, index: int, part: str, *extra: int) -> np.random.Generator:
    """The random generator of one part of one scan; independent of every other (seed, index, part)."""
    return np.random.default_rng([seed, index, _STREAMS[part], *extra])


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """One scan before rendering.

    shape_irc: (I, R, C) voxels; spacing_xyz, origin_xyz: mm as in the .mhd header (identity
    direction); offset_xyz: world position (mm) of the patient frame's origin. Nodule, finding and
    candidate positions are in the patient frame: use `world` to get LUNA16 coordinates.
    """

    seed: int
    index: int
    size: str
    scale: float
    series_uid: str
    shape_irc: tuple[int, int, int]
    spacing_xyz: np.ndarray
    origin_xyz: np.ndarray
    offset_xyz: np.ndarray
    body: Body
    vessels: VesselTree
    nodules: list[Nodule]
    excluded: list[Nodule]
    candidates_xyz: np.ndarray
    candidates_class: np.ndarray
    noise_hu: float  # standard deviation of the scanner noise
    blur_mm: float  # in-plane standard deviation of the scanner's point-spread function

    def world(self, xyz) -> np.ndarray:
        """Patient-frame mm (N, 3) or (3,) -> LUNA16 world mm (X, Y, Z)."""
        return np.asarray(xyz, float) + self.offset_xyz


def series_uid(seed: int, index: int, size: str) -> str:
    """A DICOM-like series UID, the same for the same (seed, index, size) and different otherwise."""
    digits = str(int.from_bytes(stream(seed, index, "uid", *size.encode()).bytes(16), "big"))
    return UID_ROOT + digits[:30].lstrip("0")


def plan_scan(seed: int, index: int, size: str = "small", scale: float = 1.0) -> ScanPlan:
    """Everything about scan `index` of a run with `seed` except its voxels (cheap next to rendering them)."""
    check_size(size, scale)
    body = sample_body(stream(seed, index, "body"))
    vessels = grow_vessels(body, stream(seed, index, "vessels"))
    rng = stream(seed, index, "nodules")
    nodules = place_nodules(body, vessels, rng)
    excluded = place_excluded(body, vessels, rng, nodules)
    cand_xyz, cand_cls = sample_candidates(body, vessels, nodules, excluded, stream(seed, index, "candidates"))
    g = stream(seed, index, "geometry", *size.encode())
    shape, spacing, origin, offset = _geometry(body, SIZES[size], scale, g)
    return ScanPlan(
        seed,
        index,
        size,
        scale,
        series_uid(seed, index, size),
        shape,
        spacing,
        origin,
        offset,
        body,
        vessels,
        nodules,
        excluded,
        cand_xyz,
        cand_cls,
        float(g.uniform(10, 20)),
        float(g.uniform(0.5, 0.8)),
    )


def check_size(size: str, scale: float) -> None:
    """Raise `ConfigError` for an unknown size or a scale outside (0, 1]."""
    if size not in SIZES:
        raise ConfigError(f"unknown scan size {size!r}", fix=f"Use one of: {', '.join(SIZES)}.")
    if not 0.1 <= scale <= 1.0:
        raise ConfigError(
            f"scale must be between 0.1 and 1, got {scale}",
            fix="Use 1 (the default) or a smaller factor for quick tests.",
        )


def _geometry(body: Body, spec: SizeSpec, scale: float, rng: np.random.Generator):
    """(shape_irc, spacing_xyz, origin_xyz, offset_xyz) for a field of view that holds the whole chest.

    In-plane spacing is drawn from 0.6-0.9 mm at 512 voxels (proportionally coarser for fewer),
    raised if needed so that the body fits with a 12 mm margin. The scan runs from 20-40 mm below
    the lowest lung point to 15-35 mm above the apices, as a chest protocol does.
    """
    n = int(rng.choice(spec.in_plane))
    lo, hi = 0.6 * 512 / n, 0.9 * 512 / n
    need = 2 * (body.half_width + 12.0) / n
    pixel = max(rng.uniform(lo, hi), need)
    z_lo = -rng.uniform(20, 40) * body.size
    extent = body.lung_height - z_lo + rng.uniform(15, 35)
    if spec.slices is not None:
        slices = int(rng.integers(spec.slices[0], spec.slices[1] + 1))
        thickness = round(extent / slices, 3)
    else:
        thickness = float(rng.choice(spec.thickness))
        slices = int(np.ceil(extent / thickness))
    n_scaled, slices_scaled = max(32, round(n * scale)), max(16, round(slices * scale))
    spacing = np.array([pixel * n / n_scaled, pixel * n / n_scaled, thickness * slices / slices_scaled])
    spacing = np.round(spacing, 6)
    fov = n_scaled * spacing[0]
    origin = np.array([-fov / 2 + rng.uniform(-5, 5), -fov / 2 + rng.uniform(-20, 20), rng.uniform(-380, -220)])
    # the body's centre sits near the middle of the field of view, shifted by what the margin allows
    slack = max(0.0, fov / 2 - body.half_width - 10.0)
    centre_y = body.outline[0]
    offset = np.array(
        [
            origin[0] + fov / 2 + rng.uniform(-slack, slack) * 0.5,
            origin[1] + fov / 2 - centre_y + rng.uniform(-slack, slack) * 0.5,
            origin[2] - z_lo,
        ]
    )
    return (slices_scaled, n_scaled, n_scaled), spacing, origin, offset
