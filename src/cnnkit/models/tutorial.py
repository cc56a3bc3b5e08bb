"""The small CNNs of the popular tutorials, sized for any channel count, image size and class count."""

from __future__ import annotations

from torch import nn

from cnnkit.models.registry import flat_size, register

FIRST_CONV = "features.0"


class ConvClassifier(nn.Module):
    """A conv feature extractor, fully connected hidden layers, then a linear head: every tutorial net's shape."""

    def __init__(self, features: nn.Sequential, hidden: list[int], shape: tuple[int, int, int], dropout: float = 0.0):
        super().__init__()
        in_channels, num_classes, image_size = shape
        self.features = features
        width = flat_size(features, in_channels, image_size)
        layers: list[nn.Module] = [nn.Flatten()]
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.hidden(self.features(x)))


def conv(cin: int, cout: int, kernel: int, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.ReLU(inplace=True)]


@register("lenet", first_conv=FIRST_CONV)
def lenet(in_channels, num_classes, image_size):
    """LeNet-5 as in PyTorch's CIFAR-10 tutorial: conv6-5, pool, conv16-5, pool, fc120, fc84."""
    features = nn.Sequential(*conv(in_channels, 6, 5), nn.MaxPool2d(2), *conv(6, 16, 5), nn.MaxPool2d(2))
    return ConvClassifier(features, [120, 84], (in_channels, num_classes, image_size))


@register("tutorial-net", first_conv=FIRST_CONV)
def tutorial_net(in_channels, num_classes, image_size):
    """Two conv layers and one linear layer: conv6-5, pool, conv16-5, pool, linear."""
    features = nn.Sequential(*conv(in_channels, 6, 5), nn.MaxPool2d(2), *conv(6, 16, 5), nn.MaxPool2d(2))
    return ConvClassifier(features, [], (in_channels, num_classes, image_size))


@register("simplecnn", first_conv=FIRST_CONV)
def simplecnn(in_channels, num_classes, image_size):
    """The tutorials' SimpleCNN: conv32-3, pool, conv64-3, pool (padded convs), fc128."""
    features = nn.Sequential(*conv(in_channels, 32, 3, 1), nn.MaxPool2d(2), *conv(32, 64, 3, 1), nn.MaxPool2d(2))
    return ConvClassifier(features, [128], (in_channels, num_classes, image_size))


@register("pytorch-mnist", first_conv=FIRST_CONV)
def pytorch_mnist(in_channels, num_classes, image_size, dropout: float = 0.5):
    """PyTorch's MNIST example: conv32-3, conv64-3, pool, fc128, with dropout (the benchmarks' baseline net)."""
    features = nn.Sequential(
        *conv(in_channels, 32, 3), *conv(32, 64, 3), nn.MaxPool2d(2), nn.Dropout(dropout / 2)
    )  # the example's 0.25 after pooling, half the classifier's rate
    return ConvClassifier(features, [128], (in_channels, num_classes, image_size), dropout)


@register("small-cnn", first_conv=FIRST_CONV)
def small_cnn(in_channels, num_classes, image_size):
    """conv16-3, pool, conv32-3, pool, linear: padded convs, so it keeps images as small as 4x4."""
    features = nn.Sequential(*conv(in_channels, 16, 3, 1), nn.MaxPool2d(2), *conv(16, 32, 3, 1), nn.MaxPool2d(2))
    return ConvClassifier(features, [], (in_channels, num_classes, image_size))


@register("avgpool-cnn", first_conv=FIRST_CONV)
def avgpool_cnn(in_channels, num_classes, image_size):
    """conv10-5 (pad 2), avg-pool, conv20-5, avg-pool, fc250, fc100."""
    features = nn.Sequential(*conv(in_channels, 10, 5, 2), nn.AvgPool2d(2), *conv(10, 20, 5), nn.AvgPool2d(2))
    return ConvClassifier(features, [250, 100], (in_channels, num_classes, image_size))
