"""A lighter nodule classifier: strided convolutions on a smaller patch, with a position-aware head.

Shape at the defaults (3D, width 16, depth 3):
    (B, 1, 16, 32, 32) -> tail batchnorm -> stem [conv3 + BN + ReLU] 16 channels
    -> 3 x [conv3 stride 2 + BN + ReLU, conv3 + BN + ReLU]: 32, 64, 128 channels; 16x32x32 -> 8x16x16 -> 4x8x8 -> 2x4x4
    -> flatten (B, 4096) -> linear -> (B, 2) logits.

Why not the book's shape (`nodule_classifier`): the book's 32x48x48 net spends most of its FLOPs on
the first full-resolution conv pair; this net trains several times faster and learns far more in the
same minutes. The head flattens the final map instead of pooling it: a nodule classifier must know
what lies at the patch centre, and a global average pool throws that away (a pooled head stayed at
chance). The measurements: docs/decisions.md, 2026-11-29.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from noduleflow.models.layers import batchnorm_nd, conv_nd, init_relu_convs
from noduleflow.models.registry import register_model


def conv_bn_relu(spatial_dims: int, c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3(x3) conv (no bias) + batch norm + ReLU; stride 2 halves each spatial size."""
    return nn.Sequential(
        conv_nd(spatial_dims)(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        batchnorm_nd(spatial_dims)(c_out),
        nn.ReLU(inplace=True),
    )


@register_model("nodule_net", example_shapes={3: (1, 16, 32, 32), 2: (1, 32, 32)})
class NoduleNet(nn.Module):
    """Strided conv classifier; top-level children (tail, stem, stage1..N, head) are the fine-tuning units.

    input_size: spatial size of one patch, (D, H, W) or (H, W), each divisible by 2**depth; the
    data pipeline and `noduleflow detect` cut patches of this size (`model.input_size`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 3,
        spatial_dims: int = 3,
        input_size: tuple[int, ...] | None = None,
    ):
        super().__init__()
        input_size = tuple(input_size or (16, 32, 32)[-spatial_dims:])
        if len(input_size) != spatial_dims or any(s % 2**depth for s in input_size):
            raise ValueError(
                f"input_size {input_size} must have {spatial_dims} sizes divisible by 2**depth = {2**depth}"
            )
        self.input_size, self.depth = input_size, depth
        self.tail = batchnorm_nd(spatial_dims)(in_channels)
        self.stem = conv_bn_relu(spatial_dims, in_channels, width)
        channels = [width * 2**i for i in range(depth + 1)]
        for i in range(depth):
            self.add_module(
                f"stage{i + 1}",
                nn.Sequential(
                    conv_bn_relu(spatial_dims, channels[i], channels[i + 1], stride=2),
                    conv_bn_relu(spatial_dims, channels[i + 1], channels[i + 1]),
                ),
            )
        self.head = nn.Linear(channels[-1] * math.prod(s // 2**depth for s in input_size), num_classes)
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *input_size) -> (B, num_classes) logits."""
        x = self.stem(self.tail(x))
        for i in range(self.depth):
            x = getattr(self, f"stage{i + 1}")(x)  # (B, width * 2**(i+1), *input_size / 2**(i+1))
        return self.head(torch.flatten(x, 1))
