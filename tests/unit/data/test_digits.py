"""The digits splits: stratified, seeded, and relabelled to 0..K-1 in the order asked for."""

import torch

from noduleflow.data.digits import load_digit_splits


def test_splits_are_stratified_and_seeded():
    splits = load_digit_splits(seed=3)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and abs(sizes[2] - 0.15 * 1797) < 2
    for part in (splits.val, splits.test):
        share = torch.bincount(part.labels, minlength=10).float() / len(part)
        assert share.min() > 0.08 and share.max() < 0.12  # every digit about 10%
    again = load_digit_splits(seed=3)
    assert torch.equal(again.val.images, splits.val.images)
    assert not torch.equal(load_digit_splits(seed=4).val.images, splits.val.images)


def test_classes_are_relabelled_in_the_order_given_and_test_can_be_empty():
    splits = load_digit_splits((5, 3), test_fraction=0.0, augment=False)
    assert splits.test is None and splits.classes == (5, 3)
    image, label = splits.train[0]
    assert image.shape == (1, 8, 8) and (image.min(), image.max()) == (0.0, 1.0)  # 0..16 ink scaled by 1/16
    assert set(splits.train.labels.tolist()) == {0, 1}
    assert len(splits.train) + len(splits.val) == 182 + 183  # all fives and threes


def test_augmentation_shifts_by_at_most_one_pixel():
    plain = load_digit_splits(augment=False).train
    torch.manual_seed(0)
    shifted = load_digit_splits(augment=True).train
    image, base = shifted[0][0][0], plain[0][0][0]
    matches = [
        torch.equal(image, torch.roll(torch.nn.functional.pad(base, (1, 1, 1, 1)), (dy, dx), (0, 1))[1:9, 1:9])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]
    assert any(matches)
    assert float(image.sum()) <= float(base.sum()) + 1e-6  # a shift can only push ink out of the frame
