"""Speed-record CNN in the airbench design (Keller Jordan, arXiv 2404.00498), written for cnnkit.

A 2x2 patch-whitening stem, three blocks of conv -> max-pool -> batch norm -> GELU -> conv -> batch norm
-> GELU, and a global max-pool into one linear layer. Pair it with `--whiten` to initialise the stem.
"""

from __future__ import annotations

from torch import nn

from cnnkit.models import register


def batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4)  # short-memory statistics keep up with short, fast runs
    norm.weight.requires_grad_(False)  # scale fixed at 1, shift learned (airbench): as accurate, less to optimise
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),  # pooling before the norm: the norm and GELU then run on a quarter of the pixels
            batch_norm(cout),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            batch_norm(cout),
            nn.GELU(),
        )


class FastCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int]):
        super().__init__()
        patch = in_channels * 2 * 2
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 2 * patch, 2), nn.GELU())  # +/- whitened 2x2 patches
        self.features = nn.Sequential(
            ConvGroup(2 * patch, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        nn.init.normal_(self.head.weight, std=1 / widths[2])  # near-zero first logits (airbench's scale)

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def _fastcnn(in_channels, num_classes, image_size, widths):
    if image_size < 9:
        raise RuntimeError("a 2x2 stem and three 2x2 poolings need at least 9x9 pixels")
    return FastCNN(in_channels, num_classes, widths)


@register("fastcnn", first_conv="stem.0")
def fastcnn(in_channels, num_classes, image_size):
    """airbench-style net (widths 64-256-256): whitened 2x2 stem, conv-pool-BN-GELU blocks; GPU speed runs."""
    return _fastcnn(in_channels, num_classes, image_size, (64, 256, 256))


@register("fastcnn-small", first_conv="stem.0")
def fastcnn_small(in_channels, num_classes, image_size):
    """The same design at widths 16-32-64: the fastest good CNN on a laptop CPU."""
    return _fastcnn(in_channels, num_classes, image_size, (16, 32, 64))
