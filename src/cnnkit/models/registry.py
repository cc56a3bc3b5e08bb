"""Model registry: a name maps to a `ModelSpec`, whose builder makes a plain `nn.Module` for the data's shape.

A builder takes (in_channels, num_classes, image_size, **options). Register one with
`@register("name", head="head", first_conv="features.0")`; the spec names the parts of the model
that cnnkit works on (like timm's pretrained configs), so nothing is guessed from the layer types.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.models.spec import ModelSpec
from cnnkit.models.timm_models import PREFIX, is_timm_name, timm_spec

CUSTOM = "custom"  # the model name a run records when it trained an nn.Module passed in from Python
AUTO = "auto"  # the model name that asks for a whole recipe chosen from the data (see `cnnkit.recipes`)


_SPECS: dict[str, ModelSpec] = {}


def register(name: str, **spec):
    """Decorator: register a builder under `name`, with the spec's fields (head, first_conv, ...) as keywords."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name == CUSTOM:
            raise CnnkitError(f"{CUSTOM!r} is reserved for modules passed in from Python; choose another name")
        if name in _SPECS:
            warnings.warn(f"model {name!r} is registered again; the new builder replaces the old one", stacklevel=2)
        about = next(iter((builder.__doc__ or "").strip().splitlines()), "")
        _SPECS[name] = ModelSpec(name, builder, about, **spec)
        return builder

    return add


def model_names() -> list[str]:
    return list(_SPECS)


def check_model_name(name: str) -> None:
    if is_timm_name(name):
        timm_spec(name)  # refuses a missing timm or a name it does not know
    elif name not in _SPECS and name not in (CUSTOM, AUTO):
        raise CnnkitError(
            f"unknown model {name!r}; choose one of: {', '.join(_SPECS)} (`cnnkit models` lists them), "
            f"or any of timm's as {PREFIX}NAME"
        )


def model_spec(name: str, module: nn.Module | None = None) -> ModelSpec:
    """The spec of a registered model, or of a module passed in from Python (which names no parts)."""
    if module is not None:
        return ModelSpec(CUSTOM, None, type(module).__name__, head=None)
    check_model_name(name)
    if is_timm_name(name):
        return timm_spec(name)
    return _SPECS[name] if name != CUSTOM else ModelSpec(CUSTOM, None, head=None)


def create_model(name: str, in_channels: int, num_classes: int, image_size: int, **options) -> nn.Module:
    """Build a registered model; unknown names, unknown options and too-small images get a clear message."""
    spec = model_spec(name)
    if spec.build is None:
        raise CnnkitError(
            f"model {CUSTOM!r} stands for an nn.Module passed in from Python, which cnnkit cannot build by name; "
            "pass an instance: cnnkit.train(model=MyNet()), cnnkit.load(run_dir, model=MyNet()) or "
            "cnnkit.resume(run_dir, model=MyNet())"
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        has = f"its options are: {', '.join(spec.options)}" if spec.options else "it takes no options"
        raise CnnkitError(f"model {name!r} has no option {', '.join(unknown)}; {has}")
    try:
        return spec.build(in_channels, num_classes, image_size, **options)
    except RuntimeError:  # a conv or pool ran out of pixels while sizing the classifier
        raise CnnkitError(
            f"model {name!r} cannot take {image_size}x{image_size} images: they shrink to nothing inside "
            f"it. Pass --image-size {_smallest_size(spec, in_channels, num_classes)} or larger, or "
            "choose a model that keeps small images, such as small-cnn or simplecnn."
        ) from None


def describe_models(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> list[tuple[str, int, str]]:
    """(name, parameter count for the given data shape, first line of the builder's docstring)."""
    return [
        (name, num_parameters(create_model(name, in_channels, num_classes, image_size)), spec.about)
        for name, spec in _SPECS.items()
    ]


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    """How many numbers `features` outputs for one image: sizes the first linear layer for any input."""
    with torch.no_grad():
        return features(torch.zeros(1, in_channels, image_size, image_size)).numel()


def _smallest_size(spec: ModelSpec, in_channels: int, num_classes: int) -> int:
    assert spec.build is not None
    for size in range(4, 257):
        try:
            spec.build(in_channels, num_classes, size)
            return size
        except RuntimeError:
            continue
    return 256
