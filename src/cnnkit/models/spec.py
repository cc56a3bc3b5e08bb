"""What cnnkit knows about a model besides its code (`ModelSpec`): the parts it works on by name, the input size
and normalisation it expects, and where its pretrained weights come from."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnkit.core.errors import CnnkitError


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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DDP's wrappers, whose parameter names carry no prefix."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
