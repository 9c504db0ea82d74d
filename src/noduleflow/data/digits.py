"""Scikit-learn's bundled handwritten digits (1,797 real 8x8 scans of digits 0-9) as torch datasets.

The images ship inside scikit-learn, so this task needs neither a download nor a cache. Pixel
values are ink counts 0..16; `DigitsDataset` scales them to [0, 1]. Splits are stratified by
class and fixed by the seed, so train/val/test never change between runs or on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SIZE = 8
"""Side of one digit image in pixels."""


class DigitsDataset(Dataset):
    """(image (1, 8, 8) float32 in [0, 1], label int64) pairs; labels are 0..K-1 in `classes` order.

    augment: shift each image by up to one pixel in x and y (zero fill), drawn from torch's RNG,
    so a seeded run (and its resume) replays the same shifts.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, augment: bool = False):
        self.images = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0).reshape(
            -1, 1, IMAGE_SIZE, IMAGE_SIZE
        )
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]  # (1, 8, 8)
        if self.augment:
            dy, dx = torch.randint(0, 3, (2,)).tolist()
            padded = torch.nn.functional.pad(image, (1, 1, 1, 1))  # (1, 10, 10)
            image = padded[:, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
        return image, self.labels[index]


@dataclass(frozen=True)
class DigitSplits:
    """Stratified train/val/test datasets (test None without a test fraction) and the digit of each label index."""

    train: DigitsDataset
    val: DigitsDataset
    test: DigitsDataset | None
    classes: tuple[int, ...]


def load_digit_splits(
    classes: tuple[int, ...] = (),
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    augment: bool = True,
) -> DigitSplits:
    """Split the digits (all ten, or only `classes`, e.g. (0, 1)) by class-stratified sampling.

    Only the training set augments. With `classes=(3, 5)`, digit 3 becomes label 0 and 5 label 1.
    test_fraction 0 holds nothing out for testing (test is None).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    keep = tuple(classes) or tuple(range(10))
    mask = np.isin(bunch.target, keep)
    images, digits = bunch.data[mask], bunch.target[mask]
    lookup = np.full(10, -1, dtype=np.int64)
    lookup[list(keep)] = np.arange(len(keep))
    labels = lookup[digits]  # digit -> its index in `keep`
    test = None
    if test_fraction > 0:
        images, test_x, labels, test_y = train_test_split(
            images, labels, test_size=test_fraction, stratify=labels, random_state=seed
        )
        test = DigitsDataset(test_x, test_y)
    val_share = val_fraction / (1 - test_fraction)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=val_share, stratify=labels, random_state=seed
    )
    return DigitSplits(DigitsDataset(train_x, train_y, augment=augment), DigitsDataset(val_x, val_y), test, keep)
