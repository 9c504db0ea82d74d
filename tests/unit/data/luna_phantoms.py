"""Tiny LUNA16-layout folders: phantoms with two lungs and one bright nodule each (helpers for the data tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noduleflow.ct import CtVolume, write_volume

SHAPE = (40, 64, 64)  # (I, R, C)
SPACING_XYZ = (0.8, 0.8, 2.0)  # mm
NODULE_IRC = (20, 30, 18)  # voxel of the nodule centre, inside the left lung
NODULE_DIAMETER_MM = 6.0
NODULE_HU = 200


def phantom(seed: int, shape=SHAPE, spacing_xyz=SPACING_XYZ, origin_xyz=(-25.0, -30.0, -100.0)) -> CtVolume:
    """Air, a soft-tissue body, two lungs (-850 HU) and a 6 mm ball of +200 HU at NODULE_IRC."""
    i, r, c = np.indices(shape, dtype=np.float64)
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    body = ((r - 32) / 30) ** 2 + ((c - 32) / 31) ** 2 <= 1
    hu[body] = 40
    for cc in (18, 46):
        hu[((i - 20) / 15) ** 2 + ((r - 32) / 18) ** 2 + ((c - cc) / 11) ** 2 <= 1] = -850
    spacing_irc = np.asarray(spacing_xyz)[::-1]
    d2 = sum(((g - n) * s) ** 2 for g, n, s in zip((i, r, c), NODULE_IRC, spacing_irc))
    hu[d2 <= (NODULE_DIAMETER_MM / 2) ** 2] = NODULE_HU
    hu += rng.normal(0, 5, shape)
    return CtVolume(np.round(hu).astype(np.int16), origin_xyz, spacing_xyz, np.eye(3), series_uid=f"1.2.826.0.{seed}")


def nodule_xyz(volume: CtVolume) -> tuple[float, float, float]:
    return tuple(volume.irc_to_xyz(NODULE_IRC).tolist())


def write_luna(root: Path, n_scans: int = 3, malignancy: bool = True) -> dict:
    """subset0/ (scans 0, 1, ...) and subset1/ (the last scan), annotations, candidates, malignancy.

    Per scan: one positive candidate 0.5 mm off the nodule, and 4 negatives (another lung, the body,
    two in the lung). Rows of an unknown series are added to every CSV.
    """
    root.mkdir(parents=True, exist_ok=True)
    volumes, annotations, candidates, mal = [], [], [], []
    for k in range(n_scans):
        volume = phantom(k)
        subset = root / f"subset{1 if k == n_scans - 1 and n_scans > 1 else 0}"
        subset.mkdir(exist_ok=True)
        write_volume(volume, subset / f"{volume.series_uid}.mhd")
        x, y, z = nodule_xyz(volume)
        uid = volume.series_uid
        annotations.append(f"{uid},{x},{y},{z},{NODULE_DIAMETER_MM}")
        mal.append(f"{uid},{x},{y},{z},{NODULE_DIAMETER_MM},{k % 2 == 0}")
        candidates.append(f"{uid},{x + 0.5},{y},{z},1")
        for irc in [(20, 32, 46), (5, 5, 32), (15, 40, 18), (25, 25, 50)]:
            cx, cy, cz = volume.irc_to_xyz(irc)
            candidates.append(f"{uid},{cx},{cy},{cz},0")
        volumes.append(volume)
    ghost = "9.9.9.9"
    annotations.append(f"{ghost},1,2,3,5.0")
    mal.append(f"{ghost},1,2,3,5.0,True")
    candidates += [f"{ghost},1,2,3,1", f"{ghost},4,5,6,0"]
    (root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "\n".join(annotations) + "\n"
    )
    (root / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n" + "\n".join(candidates) + "\n")
    if malignancy:
        (root / "annotations_with_malignancy.csv").write_text(
            "seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool\n" + "\n".join(mal) + "\n"
        )
    return {"root": root, "volumes": volumes, "uids": [v.series_uid for v in volumes]}
