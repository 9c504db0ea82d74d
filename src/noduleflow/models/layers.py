"""Building blocks shared by the architectures, written once for 2D and 3D (`spatial_dims`)."""

from __future__ import annotations

from torch import nn


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return _pick(spatial_dims, nn.Conv2d, nn.Conv3d)


def batchnorm_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.BatchNorm2d or nn.BatchNorm3d."""
    return _pick(spatial_dims, nn.BatchNorm2d, nn.BatchNorm3d)


def maxpool_nd(spatial_dims: int) -> type[nn.Module]:
    """nn.MaxPool2d or nn.MaxPool3d."""
    return _pick(spatial_dims, nn.MaxPool2d, nn.MaxPool3d)


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by optional batch norm and ReLU; keeps the spatial size.

    (B, in_channels, *S) -> (B, out_channels, *S). Without norm the convs carry a bias (the book's
    classifier block); with norm the bias is redundant and dropped.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, norm: bool = False):
        conv, bn = conv_nd(spatial_dims), batchnorm_nd(spatial_dims)
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(conv(c_in, out_channels, kernel_size=3, padding=1, bias=not norm))
            if norm:
                layers.append(bn(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def init_relu_convs(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights and small uniform biases, as in the book.

    Why: PyTorch's default init (kaiming_uniform with a=sqrt(5)) shrinks activations through
    deep ReLU stacks; fan_out keeps the backward signal at unit scale. Linear heads keep PyTorch's
    fan_in init: the book's fan_out init of a 2-output head gives weights of std 1 and logits in
    the tens at step 0 (a first-epoch loss of 5 instead of ln 10 = 2.3 on digits).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)[1]
                bound = 1 / fan_out**0.5
                nn.init.uniform_(m.bias, -bound, bound)


def _pick(spatial_dims: int, two: type[nn.Module], three: type[nn.Module]) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return two if spatial_dims == 2 else three
