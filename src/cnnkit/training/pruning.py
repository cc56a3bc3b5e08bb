"""Magnitude pruning (--prune): the smallest conv and linear weights of the whole network set to zero, and kept
at zero through training, so that a fine-tune mends the network around the weights it lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnkit.models import unwrap
from cnnkit.training.events import Callback

if TYPE_CHECKING:
    from cnnkit.training.trainer import Trainer

PRUNED_LAYERS = (nn.Conv2d, nn.Linear)  # the layers that hold nearly all the weights


def prune_smallest(model: nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Set `fraction` of the trained conv and linear weights to zero, the smallest in magnitude over the whole
    network (one threshold: layers lose what they can spare); returns parameter name -> mask (True: kept)."""
    weights = {
        f"{name}.weight": layer.weight
        for name, layer in unwrap(model).named_modules()
        if isinstance(layer, PRUNED_LAYERS) and layer.weight.requires_grad  # a fixed whitening stays whole
    }
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    kept = torch.ones_like(magnitudes, dtype=torch.bool)
    kept[magnitudes.topk(round(fraction * len(magnitudes)), largest=False).indices] = False  # exactly that many
    parts = kept.split([w.numel() for w in weights.values()])
    masks = {name: part.view(w.shape) for (name, w), part in zip(weights.items(), parts, strict=True)}
    with torch.no_grad():
        for name, weight in weights.items():
            weight.masked_fill_(~masks[name], 0)
    return masks


def sparsity(model: nn.Module) -> float:
    """The share of the conv and linear weights that are exactly zero."""
    weights = [m.weight for m in unwrap(model).modules() if isinstance(m, PRUNED_LAYERS)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


class KeepPruned(Callback):
    """Prunes at the start of training (of a resumed run too: its zeros are then the smallest weights) and sets
    the pruned weights back to zero after every step, in the model and its weight average."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.pruned: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_begin(self, trainer: Trainer) -> None:
        params = dict(unwrap(trainer.net).named_parameters())
        masks = prune_smallest(trainer.net, self.fraction)  # (torch's own prune cannot read channels-last weights)
        averages = [dict(unwrap(trainer.ema.module).named_parameters())] if trainer.ema is not None else []
        # (weight, where it is zero), the second made once: every step then zeroes in place, allocating nothing
        self.pruned = [(p[name], ~mask) for name, mask in masks.items() for p in (params, *averages)]
        self._zero()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self._zero()

    @torch.no_grad()
    def _zero(self) -> None:
        for weight, zeroed in self.pruned:
            weight.masked_fill_(zeroed, 0)
