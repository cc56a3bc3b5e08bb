"""A run's whole prediction as one module: uint8 images in, class probabilities out. `cnnkit predict`,
`cnnkit export` and a server all run this one module, so they cannot drift apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.data.preprocess import Preprocess, laid_out


class Classifier(nn.Module):
    """uint8 (N, C, H, W) images of the run's channels and size -> (N, classes) probabilities, in float32:
    the run's preprocessing, its network and, when it tests that way, test-time augmentation."""

    def __init__(self, preprocess: Preprocess, model: nn.Module, tta: bool):
        super().__init__()
        self.preprocess, self.model, self.tta = preprocess, model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        logits = six_view_logits(self.model, x, self.preprocess.memory_format) if self.tta else self.model(x)
        return logits.float().softmax(1)


def six_view_logits(model: nn.Module, images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """Each image's logits averaged over six views (airbench): the image and two copies shifted by one pixel
    (up-left, down-right), each with its mirror image; the unshifted pair counts half. A free gain for data
    whose classes do not depend on left and right (photos, not digits)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    h, w = images.shape[-2:]
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    views = [_mirror_average(model, v, memory_format) for v in (images, *shifted)]
    return (views[0] + (views[1] + views[2]) / 2) / 2


def _mirror_average(model: nn.Module, images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    # every view in the batches' own memory layout: a compiled model would recompile for other strides
    views = [laid_out(v.shape, v.device, memory_format).copy_(v) for v in (images, images.flip(3))]
    return sum(model(v).float() for v in views) / 2
