"""torchvision's ImageNet backbones, for transfer learning: a head made anew for the class count, the first
convolution remade for grey images, and the backbone's own input size and normalisation in its spec.

They build with random weights; `--pretrained` or `--pretrained-weights FILE` then loads ImageNet's (see
`cnnkit.models.pretrained`), with the first convolution's filters summed over colours for grey images.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnkit.models.registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation every torchvision ImageNet backbone was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224  # their training crop: the default image size, so pretrained filters see objects at their scale
STRIDE = 32  # each shrinks its input 32-fold before pooling: smaller images vanish inside

# name (torchvision's builder's too): (its weights, head, first convolution, what it is)
BACKBONES: dict[str, tuple[str, str, str, str]] = {
    "resnet18": (
        "ResNet18_Weights.IMAGENET1K_V1",
        "fc",
        "conv1",
        "ResNet-18, the classic transfer-learning backbone",
    ),
    "resnet50": (
        "ResNet50_Weights.IMAGENET1K_V2",
        "fc",
        "conv1",
        "ResNet-50, stronger features for 2.3x the compute of resnet18",
    ),
    "mobilenet_v3_small": (
        "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        "classifier.3",
        "features.0.0",
        "MobileNetV3-Small, the fastest on a CPU",
    ),
    "efficientnet_b0": (
        "EfficientNet_B0_Weights.IMAGENET1K_V1",
        "classifier.1",
        "features.0.0",
        "EfficientNet-B0, accurate for its size",
    ),
    "convnext_tiny": (
        "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        "classifier.2",
        "features.0.0",
        "ConvNeXt-Tiny, the most accurate and the slowest",
    ),
}


def _builder(name: str, first_conv: str, about: str) -> Callable[..., nn.Module]:
    def backbone(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        if image_size < STRIDE:
            raise RuntimeError(f"{name} shrinks images {STRIDE}-fold")
        import torchvision  # here, not above: importing it takes seconds, which every command would wait for

        net = getattr(torchvision.models, name)(num_classes=num_classes)
        if in_channels != 3:
            _remake_first_conv(net, first_conv, in_channels)
        return net

    backbone.__doc__ = f"torchvision's {about}: ImageNet weights with --pretrained; 224 px by default"
    return backbone


def _remake_first_conv(net: nn.Module, name: str, in_channels: int) -> None:
    old = net.get_submodule(name)
    assert isinstance(old, nn.Conv2d)
    parent, _, leaf = name.rpartition(".")
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]  # a Conv2d's own 2-tuples
        old.stride,  # type: ignore[arg-type]
        old.padding,  # type: ignore[arg-type]
        bias=old.bias is not None,
    )
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


for _name, (_weights, _head, _first_conv, _about) in BACKBONES.items():
    register(
        _name,
        head=_head,
        first_conv=_first_conv,
        input_size=INPUT_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=_weights,
    )(_builder(_name, _first_conv, _about))
