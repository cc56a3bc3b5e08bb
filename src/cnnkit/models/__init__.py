"""Model registry: a name maps to a function that builds a plain `nn.Module` for the data's shape.

A builder takes (in_channels, num_classes, image_size, **options). Register one with `@register("name")`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from cnnkit.errors import CnnkitError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = builder
        return builder

    return add


def model_names() -> list[str]:
    return list(_BUILDERS)


def check_model_name(name: str) -> None:
    if name not in _BUILDERS:
        raise CnnkitError(f"unknown model {name!r}; choose one of: {', '.join(_BUILDERS)} (`cnnkit models` lists them)")


def create_model(name: str, in_channels: int, num_classes: int, image_size: int, **options) -> nn.Module:
    """Build a registered model; unknown names, unknown options and too-small images get a clear message."""
    if name.startswith("custom:"):
        raise CnnkitError(f"this run trained a custom nn.Module ({name[7:]}), which cnnkit cannot rebuild by name; "
                          f"in Python, pass an instance: cnnkit.load(run_dir, model={name[7:]}(...)), "
                          f"or cnnkit.resume(run_dir, model={name[7:]}(...))")
    check_model_name(name)
    builder = _BUILDERS[name]
    accepted = list(inspect.signature(builder).parameters)[3:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        has = f"its options are: {', '.join(accepted)}" if accepted else "it takes no options"
        raise CnnkitError(f"model {name!r} has no option {', '.join(unknown)}; {has}")
    try:
        return builder(in_channels, num_classes, image_size, **options)
    except RuntimeError:  # a conv or pool ran out of pixels while sizing the classifier
        raise CnnkitError(f"model {name!r} cannot take {image_size}x{image_size} images: they shrink to nothing inside "
                          f"it. Pass --image-size {_smallest_size(builder, in_channels, num_classes)} or larger, or "
                          "choose a model that keeps small images, such as small-cnn or simplecnn.") from None


def describe_models(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> list[tuple[str, int, str]]:
    """(name, parameter count for the given data shape, first line of the builder's docstring)."""
    rows = []
    for name, builder in _BUILDERS.items():
        model = builder(in_channels, num_classes, image_size)
        rows.append((name, num_parameters(model), (builder.__doc__ or "").strip().splitlines()[0]))
    return rows


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """How many numbers `features` outputs for one image: sizes the first linear layer for any input."""
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, image_size, image_size)).numel()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DDP's wrappers, whose parameter names carry no prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def classifier_head(model: nn.Module) -> nn.Module | None:
    """The last linear layer: the classifier head (remade for a new class count, given its own rate)."""
    linears = [m for m in unwrap(model).modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _smallest_size(builder, in_channels: int, num_classes: int) -> int:
    for size in range(4, 257):
        try:
            builder(in_channels, num_classes, size)
            return size
        except RuntimeError:
            continue
    return 256


# importing the model files registers their models, in the order `cnnkit models` lists them
from cnnkit.models import tutorial  # noqa: E402,F401,I001
from cnnkit.models import resnet  # noqa: E402,F401
from cnnkit.models import fast  # noqa: E402,F401
