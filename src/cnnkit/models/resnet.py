"""A modern small CNN: ResNet-9 (the DAWNBench CIFAR-10 net), batch norm and residual blocks."""

from __future__ import annotations

from torch import nn

from cnnkit.models.registry import register


def conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64, dropout: float = 0.0):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(
            conv_bn(in_channels, w[0]),
            conv_bn(w[0], w[1], pool=True),
            Residual(w[1]),
            conv_bn(w[1], w[2], pool=True),
            conv_bn(w[2], w[3], pool=True),
            Residual(w[3]),
            nn.AdaptiveMaxPool2d(1),  # any input size ends as one vector per image
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(w[3], num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def _resnet9(in_channels, num_classes, image_size, dropout: float = 0.0, *, width: int):
    if image_size < 8:
        raise RuntimeError("three 2x2 poolings need at least 8x8 pixels")
    return ResNet9(in_channels, num_classes, width, dropout)


@register("resnet9", first_conv="features.0.0")
def resnet9(in_channels, num_classes, image_size, dropout: float = 0.0):
    """ResNet-9 (widths 64-512), batch norm, residual blocks: strong on CIFAR, best on a GPU."""
    return _resnet9(in_channels, num_classes, image_size, dropout, width=64)


@register("resnet9-small", first_conv="features.0.0")
def resnet9_small(in_channels, num_classes, image_size, dropout: float = 0.0):
    """ResNet-9 at a quarter of the width (16-128): the same design, fast enough for a laptop CPU."""
    return _resnet9(in_channels, num_classes, image_size, dropout, width=16)
