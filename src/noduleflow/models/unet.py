"""U-Net (Ronneberger et al. 2015) for 2D or 3D segmentation, one class for both (`spatial_dims`).

(B, in_channels, *S) -> (B, num_classes, *S) logits, with every size in S divisible by
2**(depth - 1). Padded convolutions keep the output the input's size (unlike the original
valid-convolution U-Net), so masks line up with the input without cropping.
"""

from __future__ import annotations

import torch
from torch import nn

from noduleflow.models.layers import DoubleConv, conv_nd, init_relu_convs, maxpool_nd
from noduleflow.models.registry import register_model


@register_model("unet", example_shapes={2: (1, 32, 32), 3: (1, 16, 32, 32)}, dense=True)
class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    depth: resolution levels (depth - 1 poolings); width: channels at full resolution, doubled
    per level. Batch norm after every conv; transposed convolutions upsample.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, width: int = 8, depth: int = 4, spatial_dims: int = 2
    ):
        super().__init__()
        chans = [width * 2**i for i in range(depth)]
        conv, up = conv_nd(spatial_dims), (nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d)
        self.down = nn.ModuleList(
            DoubleConv(spatial_dims, c_in, c_out, norm=True) for c_in, c_out in zip([in_channels] + chans[:-1], chans)
        )
        self.pool = maxpool_nd(spatial_dims)(2)
        self.up = nn.ModuleList(up(chans[i + 1], chans[i], kernel_size=2, stride=2) for i in reversed(range(depth - 1)))
        self.merge = nn.ModuleList(
            DoubleConv(spatial_dims, 2 * chans[i], chans[i], norm=True) for i in reversed(range(depth - 1))
        )
        self.head = conv(chans[0], num_classes, kernel_size=1)
        self.depth = depth
        init_relu_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, num_classes, *S)."""
        if any(s % 2 ** (self.depth - 1) for s in x.shape[2:]):
            raise ValueError(f"UNet input sizes {tuple(x.shape[2:])} must be divisible by {2 ** (self.depth - 1)}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))  # (B, width * 2**i, *S / 2**i)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))  # (B, 2c, *S') -> (B, c, *S')
        return self.head(x)


HEAD_BIAS = -4.0
"""Initial bias of the segmentation U-Net's head (sigmoid ~0.02): see `segmentation_unet`."""


def segmentation_unet(width: int, depth: int, context: int, *, head_bias: float = HEAD_BIAS) -> UNet:
    """The nodule segmentation U-Net of a detector: (B, 2 * context + 1, H, W) HU-scaled slices -> (B, 1, H, W) logits.

    2D, the `context` slices on each side of the segmented one fed as channels (train/segment_task.py
    says why). The head's bias starts at `head_bias` (a run's segment.head_bias, by default HEAD_BIAS, sigmoid
    ~0.02), a prior for how rare nodule voxels are (0.2 % of a training batch): from the default init the net calls two thirds of every crop
    nodule, and the Tversky loss, a ratio over the whole batch, moves it off that only slowly.
    """
    model = UNet(in_channels=2 * context + 1, num_classes=1, width=width, depth=depth, spatial_dims=2)
    nn.init.constant_(model.head.bias, head_bias)
    return model
