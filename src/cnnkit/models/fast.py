"""Speed-record CNN in the airbench design (Keller Jordan, arXiv 2404.00498), written for cnnkit.

A 2x2 patch-whitening stem, three blocks of conv -> max-pool -> batch norm -> GELU -> conv -> batch norm
-> GELU (or SiLU: the `activation` option), and a global max-pool into one linear layer. Pair it with
`--whiten` to initialise the stem. With a stem of stride 2 (fastcnn-s2) the stem's whitened patches do not
overlap: the blocks see a quarter of the pixels.
"""

from __future__ import annotations

from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.models.registry import register

# airbench's GELU; SiLU (x * sigmoid(x)), as smooth, trains fastcnn-s2 as well step for step on CIFAR-10 and
# its step is 7% quicker on a CPU (GELU's erf is the dearest elementwise work in the net)
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


def batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4)  # short-memory statistics keep up with short, fast runs
    norm.weight.requires_grad_(False)  # scale fixed at 1, shift learned (airbench): as accurate, less to optimise
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int, activation: type[nn.Module]):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),  # pooling before the norm: the norm and activation then run on a quarter of the pixels
            batch_norm(cout),
            activation(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            batch_norm(cout),
            activation(),
        )


class FastCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, int, int],
        stem_stride: int = 1,
        activation: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        patch = in_channels * 2 * 2
        stem = nn.Conv2d(in_channels, 2 * patch, 2, stride=stem_stride)  # +/- whitened 2x2 patches
        self.stem = nn.Sequential(stem, activation())
        self.features = nn.Sequential(
            ConvGroup(2 * patch, widths[0], activation),
            ConvGroup(widths[0], widths[1], activation),
            ConvGroup(widths[1], widths[2], activation),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        nn.init.normal_(self.head.weight, std=1 / widths[2])  # near-zero first logits (airbench's scale)

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def _fastcnn(in_channels, num_classes, image_size, activation, widths, stem_stride=1):
    smallest = 16 if stem_stride == 2 else 9
    if image_size < smallest:
        raise RuntimeError(f"a 2x2 stem of stride {stem_stride} and three poolings need {smallest}x{smallest} pixels")
    if activation not in ACTIVATIONS:
        raise CnnkitError(f"--activation {activation!r} is not one of fastcnn's: {', '.join(ACTIVATIONS)}")
    return FastCNN(in_channels, num_classes, widths, stem_stride, ACTIVATIONS[activation])


@register("fastcnn", first_conv="stem.0")
def fastcnn(in_channels, num_classes, image_size, activation: str = "gelu"):
    """airbench-style net (widths 64-256-256): whitened 2x2 stem, conv-pool-BN-GELU blocks; GPU speed runs."""
    return _fastcnn(in_channels, num_classes, image_size, activation, (64, 256, 256))


@register("fastcnn-small", first_conv="stem.0")
def fastcnn_small(in_channels, num_classes, image_size, activation: str = "gelu"):
    """The same design at widths 16-32-64: the fastest good CNN on a laptop CPU."""
    return _fastcnn(in_channels, num_classes, image_size, activation, (16, 32, 64))


@register("fastcnn-s2", first_conv="stem.0")
def fastcnn_s2(in_channels, num_classes, image_size, activation: str = "gelu"):
    """fastcnn with a stride-2 stem at widths 32-64-128: a quarter of the pixels, twice the width; many photos, CPU.

    As fast per image as fastcnn-small at 32 px, and more accurate in a time budget on 20,000 or more colour
    images (CIFAR-10 at 120 s: +1.3 points); less accurate on glyphs and on a few thousand photos."""
    return _fastcnn(in_channels, num_classes, image_size, activation, (32, 64, 128), stem_stride=2)
