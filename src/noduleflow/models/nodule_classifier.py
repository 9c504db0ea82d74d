"""The nodule candidate classifier of "Deep Learning with PyTorch" (ch. 11), for 2D or 3D input.

Shape at the defaults (3D, width 8, depth 4):
    (B, 1, 32, 48, 48) -> tail batchnorm -> 4 x [conv3 + BN + ReLU, conv3 + BN + ReLU, maxpool 2]
    channels 8 -> 16 -> 32 -> 64, spatial 32x48x48 -> 16x24x24 -> 8x12x12 -> 4x6x6 -> 2x3x3
    -> flatten (B, 1152) -> linear -> (B, 2) logits.
The tail batchnorm learns the HU scaling, so patches arrive as clamped HU without per-scan
normalisation. The model returns logits only; softmax belongs to the loss and the metrics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noduleflow.models.layers import DoubleConv, batchnorm_nd, init_relu_convs, maxpool_nd
from noduleflow.models.registry import register_model


@register_model("nodule_classifier", example_shapes={3: (1, 32, 48, 48), 2: (1, 48, 48)})
class NoduleClassifier(nn.Module):
    """Book-shaped conv classifier; top-level children (tail, block1..N, head) are the fine-tuning units.

    input_size: spatial size of one patch, (D, H, W) or (H, W), each divisible by 2**depth.
    norm: batch norm after each conv of the blocks (a change from the book): without it the loss
        sat at chance for epochs on synthetic candidates (docs/decisions.md, 2026-11-29).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 8,
        depth: int = 4,
        spatial_dims: int = 3,
        input_size: tuple[int, ...] | None = None,
        norm: bool = True,
    ):
        super().__init__()
        input_size = tuple(input_size or (32, 48, 48)[-spatial_dims:])
        if len(input_size) != spatial_dims or any(s % 2**depth for s in input_size):
            raise ValueError(
                f"input_size {input_size} must have {spatial_dims} sizes divisible by 2**depth = {2**depth}"
            )
        self.input_size = input_size  # what the data pipeline and `detect` cut for this model
        self.tail = batchnorm_nd(spatial_dims)(in_channels)
        channels = [in_channels] + [width * 2**i for i in range(depth)]
        for i in range(depth):
            block = nn.Sequential(
                DoubleConv(spatial_dims, channels[i], channels[i + 1], norm=norm), maxpool_nd(spatial_dims)(2)
            )
            self.add_module(f"block{i + 1}", block)
        features = channels[-1] * math.prod(s // 2**depth for s in input_size)
        self.head = nn.Linear(features, num_classes)
        self.depth = depth
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) or (B, C, H, W) -> (B, num_classes) logits."""
        x = self.tail(x)
        for i in range(self.depth):
            x = getattr(self, f"block{i + 1}")(x)  # (B, width * 2**i, *S / 2**(i+1))
        return self.head(torch.flatten(x, 1))  # (B, features) -> (B, num_classes)
