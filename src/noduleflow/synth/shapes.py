"""Shape primitives in the patient frame (mm), shared by the anatomy, the vessel trees and the nodules.

Functions take coordinates as broadcastable arrays: (N,) arrays to test N points, or a `Grid`'s
axes shaped (I, 1, 1), (1, R, 1), (1, 1, C) to fill a volume. Broadcasting keeps terms that depend
on one or two axes at 1D or 2D cost, which is what makes a whole chest render in about a second.
Small shapes (vessels, ribs, nodules) are evaluated only inside their own bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleflow.ct import irc_to_xyz

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of one scan in the patient frame.

    z: (I,), y: (R,), x: (C,) increasing mm, float32 so that full-volume arithmetic moves half the
    bytes (shape parameters are Python floats, which keep it float32); `soft` is the edge width in
    mm used to anti-alias small shapes (the partial-volume effect of a real scanner).
    """

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    soft: float

    @classmethod
    def from_geometry(cls, shape_irc, origin_xyz, spacing_xyz, offset_xyz) -> Grid:
        """Axes of a scan with an axis-aligned (identity) direction, shifted so the patient sits at 0.

        offset_xyz is the world position (mm) of the patient frame's origin.
        """
        axes = []
        for k, n in enumerate(shape_irc):  # k = 0, 1, 2 for I, R, C
            irc = np.zeros((n, 3))
            irc[:, k] = np.arange(n)
            xyz = irc_to_xyz(irc, origin_xyz, spacing_xyz, np.eye(3))
            axes.append((xyz[:, 2 - k] - offset_xyz[2 - k]).astype(np.float32))
        soft = float(np.prod(spacing_xyz) ** (1 / 3))
        return cls(axes[0], axes[1], axes[2], soft)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    def box(self, lo_xyz, hi_xyz) -> Box | None:
        """Index slices (I, R, C) of the voxels whose centres lie in [lo, hi] (mm, X Y Z order); None if empty."""
        out = []
        for axis, lo, hi in (
            (self.z, lo_xyz[2], hi_xyz[2]),
            (self.y, lo_xyz[1], hi_xyz[1]),
            (self.x, lo_xyz[0], hi_xyz[0]),
        ):
            a, b = np.searchsorted(axis, lo, "left"), np.searchsorted(axis, hi, "right")
            if b <= a:
                return None
            out.append(slice(int(a), int(b)))
        return tuple(out)  # type: ignore[return-value]

    def axes(self, box: Box | None = None):
        """(z, y, x) coordinate arrays of `box` shaped (I, 1, 1), (1, R, 1), (1, 1, C) for broadcasting."""
        bz, by, bx = box if box is not None else (slice(None),) * 3
        return self.z[bz][:, None, None], self.y[by][None, :, None], self.x[bx][None, None, :]


@dataclass(frozen=True)
class Tubes:
    """Capsules with linearly tapering radius: a (S, 3) -> b (S, 3) in mm (X, Y, Z), radii r0, r1 (S,) mm."""

    a: np.ndarray
    b: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @classmethod
    def polyline(cls, points, radii) -> Tubes:
        """One tube through points (P, 3) whose radius goes through radii (P,)."""
        p, r = np.asarray(points, float), np.asarray(radii, float)
        return cls(p[:-1], p[1:], r[:-1], r[1:])

    @classmethod
    def concat(cls, parts) -> Tubes:
        parts = list(parts)
        return cls(*(np.concatenate([getattr(t, f) for t in parts]) for f in ("a", "b", "r0", "r1")))

    def __len__(self) -> int:
        return len(self.r0)

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """True (N,) for points (N, 3) inside any tube; each tube tests only the points in its own box."""
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        inside = np.zeros(len(xyz), bool)
        pad = np.maximum(self.r0, self.r1)[:, None]
        lo, hi = np.minimum(self.a, self.b) - pad, np.maximum(self.a, self.b) + pad
        near = np.flatnonzero(_in_box(xyz, lo.min(0), hi.max(0)))  # first the box around all tubes
        p = xyz[near]
        for k in range(len(self)):
            idx = np.flatnonzero(_in_box(p, lo[k], hi[k]))
            if len(idx):
                q = p[idx]
                d, t = segment_distance(q[:, 0], q[:, 1], q[:, 2], self.a[k], self.b[k])
                inside[near[idx]] |= d < self.r0[k] + (self.r1[k] - self.r0[k]) * t
        return inside

    def point_distance(self, xyz: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """Signed distance (N,) mm (< 0 inside) from points (N, 3) to the union of all tubes.

        Vectorised over points and tubes at once, in chunks of `chunk` point-tube pairs.
        """
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        out = np.full(len(xyz), np.inf)
        if len(self) == 0:
            return out
        ab = self.b - self.a  # (S, 3)
        ab2 = np.maximum(np.einsum("sk,sk->s", ab, ab), 1e-12)
        step = max(1, chunk // len(self))
        for i in range(0, len(xyz), step):
            d = xyz[i : i + step, None, :] - self.a[None]  # (n, S, 3)
            t = np.clip(np.einsum("nsk,sk->ns", d, ab) / ab2, 0.0, 1.0)
            gap = np.linalg.norm(d - t[..., None] * ab, axis=2) - (self.r0 + (self.r1 - self.r0) * t)
            out[i : i + step] = gap.min(axis=1)
        return out

    def distance(self, x, y, z) -> np.ndarray:
        """Signed distance (mm, < 0 inside) from broadcastable coordinates (e.g. a grid box) to the union of all tubes."""
        best = np.inf
        for k in range(len(self)):
            d, t = segment_distance(x, y, z, self.a[k], self.b[k])
            r0, r1 = float(self.r0[k]), float(self.r1[k])
            best = np.minimum(best, d - (r0 + (r1 - r0) * t))
        return best


def _in_box(p: np.ndarray, lo, hi) -> np.ndarray:
    """True (N,) for points (N, 3) in the box [lo, hi]; column by column, which numpy does faster than axis=1."""
    return (
        (p[:, 0] >= lo[0])
        & (p[:, 0] <= hi[0])
        & (p[:, 1] >= lo[1])
        & (p[:, 1] <= hi[1])
        & (p[:, 2] >= lo[2])
        & (p[:, 2] <= hi[2])
    )


def segment_distance(x, y, z, a, b):
    """Distance (mm) from points to segment a -> b, and the position t in [0, 1] of the nearest point on it."""
    (ax, ay, az), (bx, by, bz) = np.asarray(a, float).tolist(), np.asarray(b, float).tolist()
    ux, uy, uz = bx - ax, by - ay, bz - az  # Python floats keep float32 inputs float32
    dx, dy, dz = x - ax, y - ay, z - az
    t = np.clip((dx * ux + dy * uy + dz * uz) / max(ux * ux + uy * uy + uz * uz, 1e-12), 0.0, 1.0)
    d2 = (dx - t * ux) ** 2 + (dy - t * uy) ** 2 + (dz - t * uz) ** 2
    return np.sqrt(d2), t


def ellipsoid_level(x, y, z, centre, semi_axes):
    """Axis-aligned ellipsoid level: < 1 inside. Broadcasts, so on grid axes it costs two full-size adds."""
    (cx, cy, cz), (ax, ay, az) = np.asarray(centre, float).tolist(), np.asarray(semi_axes, float).tolist()
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2


def tube_fraction(grid: Grid, tubes: Tubes, region: Box | None = None):
    """Occupancy in [0, 1] of the union of `tubes` on `grid`, anti-aliased over `grid.soft` mm.

    Returns (region, frac) where frac (float32) covers only `region` (default: the tubes' bounding
    box); each tube is evaluated inside its own small box, so thousands of vessel segments stay cheap.
    Returns (None, None) when no tube touches the grid.
    """
    if len(tubes) == 0:
        return None, None
    pad = np.maximum(tubes.r0, tubes.r1) + grid.soft
    lo = np.minimum(tubes.a, tubes.b) - pad[:, None]
    hi = np.maximum(tubes.a, tubes.b) + pad[:, None]
    if region is None:
        region = grid.box(lo.min(0), hi.max(0))
        if region is None:
            return None, None
    frac = np.zeros([s.stop - s.start for s in region], np.float32)
    # index ranges (I, R, C) of every tube's box at once, clipped to the region and made local to it
    first = np.stack(
        [np.searchsorted(axis, lo[:, k], "left") for axis, k in ((grid.z, 2), (grid.y, 1), (grid.x, 0))], 1
    )
    last = np.stack(
        [np.searchsorted(axis, hi[:, k], "right") for axis, k in ((grid.z, 2), (grid.y, 1), (grid.x, 0))], 1
    )
    start = np.array([s.start for s in region])
    first = np.maximum(first, start) - start
    last = np.minimum(last, [s.stop for s in region]) - start
    soft = float(grid.soft)
    size = (last - first).max(axis=1)
    todo = np.all(last > first, axis=1)
    for cap in (3, 6):  # thin vessels cover a few voxels: do them all at once, not one Python step each
        batch = np.flatnonzero(todo & (size <= cap))
        if len(batch):
            _fraction_batch(frac, grid, start, first[batch], cap, tubes, batch, soft)
        todo[batch] = False
    a, b, r0s, r1s = tubes.a.tolist(), tubes.b.tolist(), tubes.r0.tolist(), tubes.r1.tolist()
    for k in np.flatnonzero(todo).tolist():
        (i0, j0, c0), (i1, j1, c1) = first[k].tolist(), last[k].tolist()
        z = grid.z[start[0] + i0 : start[0] + i1, None, None]
        y = grid.y[start[1] + j0 : start[1] + j1, None]
        x = grid.x[start[2] + c0 : start[2] + c1]
        d, t = segment_distance(x, y, z, a[k], b[k])
        f = np.clip(0.5 + (r0s[k] + (r1s[k] - r0s[k]) * t - d) / soft, 0.0, 1.0)
        local = frac[i0:i1, j0:j1, c0:c1]
        np.maximum(local, f, out=local)
    return region, frac


def _fraction_batch(frac, grid: Grid, start, first, cap: int, tubes: Tubes, idx, soft: float) -> None:
    """Max the occupancy of tubes[idx] into frac over a (cap, cap, cap) block from each one's `first` corner.

    The blocks may reach past a tube's own box (the occupancy there is 0) and are clipped to frac.
    """
    ax = [np.clip(first[:, k, None] + np.arange(cap), 0, frac.shape[k] - 1) for k in range(3)]  # (S, cap) each
    iz, iy, ix = ax[0][:, :, None, None], ax[1][:, None, :, None], ax[2][:, None, None, :]
    z = grid.z[start[0] + iz]  # (S, cap, 1, 1) mm
    y = grid.y[start[1] + iy]
    x = grid.x[start[2] + ix]
    a, ab = tubes.a[idx].astype(np.float32), (tubes.b[idx] - tubes.a[idx]).astype(np.float32)
    shape = (-1, 1, 1, 1)
    dx, dy, dz = x - a[:, 0].reshape(shape), y - a[:, 1].reshape(shape), z - a[:, 2].reshape(shape)
    ux, uy, uz = (ab[:, k].reshape(shape) for k in range(3))
    t = np.clip((dx * ux + dy * uy + dz * uz) / np.maximum(ux * ux + uy * uy + uz * uz, 1e-12), 0.0, 1.0)
    d = np.sqrt((dx - t * ux) ** 2 + (dy - t * uy) ** 2 + (dz - t * uz) ** 2)
    r0, r1 = tubes.r0[idx].astype(np.float32).reshape(shape), tubes.r1[idx].astype(np.float32).reshape(shape)
    f = np.clip(0.5 + (r0 + (r1 - r0) * t - d) / np.float32(soft), 0.0, 1.0)
    np.maximum.at(frac, (iz, iy, ix), f)


def blend(hu: np.ndarray, region: Box | None, frac: np.ndarray | None, value, where: np.ndarray | None = None) -> None:
    """In place: hu[region] moves towards `value` (HU, scalar or array) by frac, only where `where` is True."""
    if region is None or frac is None:
        return
    if where is not None:
        frac = frac * where[region]
    view = hu[region]
    view += (value - view) * frac


def sphere_directions() -> np.ndarray:
    """(14, 3) unit vectors to the faces and corners of a cube: probes for 'is the whole ball inside?'."""
    d = np.array(
        [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if abs(i) + abs(j) + abs(k) in (1, 3)],
        float,
    )
    return d / np.linalg.norm(d, axis=1, keepdims=True)
