"""A small 2D CNN for 8x8 handwritten digits (scikit-learn's `load_digits`).

(B, 1, 8, 8) -> depth x [conv3 + BN + ReLU, conv3 + BN + ReLU, maxpool 2] -> flatten -> dropout
-> linear -> (B, num_classes) logits. At width 32, depth 2: 8x8x32 -> 4x4x32 -> 2x2x64 -> 256
features. Batch norm (unlike the book classifier) because 8x8 inputs leave no room for a
tail-only normalisation to carry the whole net; dropout because 1,300 training images overfit.
"""

from __future__ import annotations

import torch
from torch import nn

from noduleflow.models.layers import DoubleConv, init_relu_convs
from noduleflow.models.registry import register_model


@register_model("digits_cnn", example_shapes={2: (1, 8, 8)})
class DigitsCNN(nn.Module):
    """Conv blocks that double the channels and halve the size; `image_size` must be divisible by 2**depth."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        image_size: int = 8,
        dropout: float = 0.25,
        bn_momentum: float = 0.3,
    ):
        super().__init__()
        if image_size % 2**depth:
            raise ValueError(f"image_size {image_size} must be divisible by 2**depth = {2**depth}")
        channels = [in_channels] + [width * 2**i for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(DoubleConv(2, c_in, c_out, norm=True), nn.MaxPool2d(2))
                for c_in, c_out in zip(channels[:-1], channels[1:])
            )
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1] * (image_size // 2**depth) ** 2, num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                # 1,300 images make 20 steps an epoch (ones vs. zeros: 4): at the default 0.1 the
                # running statistics used at evaluation still hold much of their initial values after
                # two epochs, so a short run tests badly (docs/decisions.md, 2026-11-29).
                m.momentum = bn_momentum
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 8, 8) -> (B, num_classes)."""
        x = self.blocks(x)  # (B, width * 2**(depth-1), 8 / 2**depth, 8 / 2**depth)
        return self.head(self.dropout(torch.flatten(x, 1)))
