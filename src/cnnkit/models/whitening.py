"""Patch-whitening initialisation: the first conv layer starts as a fixed whitening of the input's patches.

Each filter is an eigenvector of the training patches' covariance, scaled by 1/sqrt(eigenvalue), so the
layer's outputs start decorrelated with unit variance: the rest of the net learns from step one instead
of first learning to undo the pixels' strong correlations (airbench, arXiv 2404.00498).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError


@torch.no_grad()
def whiten_conv(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set a conv's filters to whiten `images`' patches (as +W and -W when it has twice the filters).

    `images` are normalised float images (N, C, H, W). The filters are frozen: they stay a whitening. The bias
    starts at zero and learns early in the run only (the trainer's EARLY_SHARE).
    """
    kh, kw = conv.kernel_size
    patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, H', W', kh, kw)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, conv.in_channels * kh * kw).double()
    patches -= patches.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt()[:, None]).float()
    dim = filters.shape[0]
    if conv.out_channels not in (dim, 2 * dim) or conv.groups != 1:
        raise CnnkitError(
            f"--whiten needs a first conv with {dim} or {2 * dim} filters of {kh}x{kw} over "
            f"{conv.in_channels} channels; this model's has {conv.out_channels}: use model fastcnn"
        )
    weight = filters if conv.out_channels == dim else torch.cat([filters, -filters])
    conv.weight.copy_(weight.view_as(conv.weight))
    if conv.bias is not None:
        conv.bias.zero_()
    conv.weight.requires_grad_(False)
