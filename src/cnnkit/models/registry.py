"""Model registry: a name maps to a `ModelSpec`, whose builder makes a plain `nn.Module` for the data's shape.

A builder takes (in_channels, num_classes, image_size, **options). Register one with
`@register("name", head="head", first_conv="features.0")`; the spec names the parts of the model
that cnnkit works on (like timm's pretrained configs), so nothing is guessed from the layer types.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError

CUSTOM = "custom"  # the model name a run records when it trained an nn.Module passed in from Python
AUTO = "auto"  # the model name that asks for a whole recipe chosen from the data (see `cnnkit.recipes`)


@dataclass(frozen=True)
class ModelSpec:
    """What cnnkit knows about a model besides its code."""

    name: str
    build: Callable[..., nn.Module] | None  # None: a module passed in from Python, which cnnkit cannot rebuild
    about: str = ""
    head: str | None = "head"  # the classifier head by name: remade for a new class count, given --head-lr
    first_conv: str | None = None  # the first convolution by name: what --whiten initialises
    input_size: int | None = None  # the image size the model expects (None: any size)
    mean: tuple[float, ...] | None = None  # the model's own normalisation (a pretrained backbone's)
    std: tuple[float, ...] | None = None
    init_options: tuple[str, ...] = ()  # options that only initialise (e.g. pretrained=True): never stored
    weights: str | None = None  # torchvision's name of its pretrained weights, which --pretrained downloads

    @property
    def options(self) -> list[str]:
        return list(inspect.signature(self.build).parameters)[3:] if self.build else []

    def architecture(self, options: dict) -> dict:
        """The options that shape the network, as model.json stores them; initialisation-only ones left out."""
        return {k: v for k, v in options.items() if k not in self.init_options}

    def head_module(self, model: nn.Module, needed_for: str) -> nn.Linear:
        return self._part(model, self.head, "classifier head", needed_for)

    def backbone_parameters(self, model: nn.Module, needed_for: str) -> list[nn.Parameter]:
        """Every parameter outside the classifier head."""
        head = {id(p) for p in self.head_module(model, needed_for).parameters()}
        return [p for p in unwrap(model).parameters() if id(p) not in head]

    def first_conv_module(self, model: nn.Module, needed_for: str) -> nn.Conv2d:
        return self._part(model, self.first_conv, "first convolution", needed_for)

    def _part(self, model: nn.Module, name: str | None, what: str, needed_for: str):
        if name is None:
            raise CnnkitError(
                f"{needed_for} needs the model's {what}, and model {self.name!r} names none; "
                f"register its builder with cnnkit.register(name, head=..., first_conv=...)"
            )
        return unwrap(model).get_submodule(name)


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
    if name not in _SPECS and name not in (CUSTOM, AUTO):
        raise CnnkitError(f"unknown model {name!r}; choose one of: {', '.join(_SPECS)} (`cnnkit models` lists them)")


def model_spec(name: str, module: nn.Module | None = None) -> ModelSpec:
    """The spec of a registered model, or of a module passed in from Python (which names no parts)."""
    if module is not None:
        return ModelSpec(CUSTOM, None, type(module).__name__, head=None)
    check_model_name(name)
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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DDP's wrappers, whose parameter names carry no prefix."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _smallest_size(spec: ModelSpec, in_channels: int, num_classes: int) -> int:
    assert spec.build is not None
    for size in range(4, 257):
        try:
            spec.build(in_channels, num_classes, size)
            return size
        except RuntimeError:
            continue
    return 256
