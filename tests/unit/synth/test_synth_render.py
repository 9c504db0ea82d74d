"""Rendered scans read as chest CT: tissue densities, nodules where the annotations say, scanner noise, previews."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from noduleflow.synth.preview import write_preview


def _ball(volume, irc, radius_mm):
    """Distances (mm) of every voxel of `volume` from voxel irc: (I, R, C)."""
    axes = [(np.arange(n) - irc[k]) * s for k, (n, s) in enumerate(zip(volume.shape, volume.spacing_irc))]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(z**2 + y**2 + x**2)


def test_tissues_have_chest_ct_densities(rendered):
    for scan in rendered:
        hu, lung = scan.volume.hu, scan.lung
        corners = np.concatenate([hu[:, :6, :6].ravel(), hu[:, :6, -6:].ravel()])
        assert abs(np.median(corners) + 1000) < 8 and 7 < corners.std() < 25  # air outside, with scanner noise
        assert -900 < np.median(hu[lung]) < -780 and 0.08 < lung.mean() < 0.5  # aerated lungs, a good part of the scan
        assert np.percentile(hu, 99.9) > 300 and hu.max() > 500  # bone: spine, ribs, sternum
        body = hu > -500
        fat = ((hu > -140) & (hu < -60)).sum() / body.sum()
        soft = ((hu > 10) & (hu < 80)).sum() / body.sum()
        assert fat > 0.05 and soft > 0.2, (fat, soft)
        assert hu.dtype == np.int16 and not lung[0].any() and not lung[:, 0].any()  # no lung at the scan's edges


def test_nodules_are_drawn_at_their_annotated_centres_inside_the_lung(rendered):
    nodules = 0
    for scan in rendered:
        plan, volume = scan.plan, scan.volume
        lung_hu = np.median(volume.hu[scan.lung])
        for n in plan.nodules:
            irc = volume.xyz_to_irc(plan.world(n.centre))
            assert scan.lung[tuple(irc)], f"{n.kind} {n.site} centre outside the lung"
            centre_hu = volume.hu[tuple(irc)]
            assert centre_hu > max(-750, lung_hu + 100), (
                f"{n.kind} {n.diameter_mm:.1f} mm: {centre_hu} HU at its centre"
            )
            distance = _ball(volume, irc, n.diameter_mm)
            shell = (distance > 1.5 * n.diameter_mm / 2) & (distance < 2.5 * n.diameter_mm / 2 + 3)
            assert scan.lung[shell].mean() > 0.5, f"{n.site} nodule not surrounded by lung"
            nodules += 1
    assert nodules >= 6


def test_preview_shows_the_scan_and_one_row_per_nodule(rendered, tmp_path):
    for scan in rendered[:1]:
        path = write_preview(scan.volume, scan.plan, tmp_path / f"{scan.plan.series_uid}.png")
        image = imread(path)
        rows = 1 + len(scan.plan.nodules)
        assert image.shape[1] == 768 and abs(image.shape[0] - 264 * rows) <= 2
        assert image[..., :3].std() > 0.1  # not blank
    assert not list(tmp_path.glob(".*.tmp"))
