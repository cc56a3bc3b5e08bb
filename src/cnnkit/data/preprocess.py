"""Preprocessing as a module: uint8 images in, normalised float images out.

It travels with a run's model (`Run.inference_model()`), so a prediction, an exported model or a server
feeds the network exactly what training fed it, with no separate recipe to keep in step.
"""

from __future__ import annotations

import torch
from torch import nn


class Preprocess(nn.Module):
    """uint8 (N, C, H, W) -> float, scaled to zero mean and unit std per channel in one fused multiply-add."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self, mean: list[float], std: list[float], memory_format: torch.memory_format = torch.contiguous_format
    ):
        super().__init__()
        std_t = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std_t))
        self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / std_t)
        self.memory_format = memory_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = laid_out(images.shape, images.device, self.memory_format)
        return torch.addcmul(self.shift, images, self.scale, out=out)


def laid_out(shape: torch.Size, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """An empty float batch with the strides of `memory_format`, even where one channel makes two layouts
    equivalent: a compiled model recompiles for any other strides."""
    return torch.empty(shape, device=device, memory_format=memory_format)
