"""Optimisers: PyTorch's own, plus Muon for convolution filters (the optimiser of the CIFAR-10 speed records).

Muon (Keller Jordan, 2024) replaces each filter bank's momentum by the nearest semi-orthogonal matrix:
every direction of the update gets the same size, so rare but useful directions are learned as fast as
the dominant ones. It lets airbench94_muon reach 94% in 8 passes, fewer than its SGD predecessor needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.models import ModelSpec

if TYPE_CHECKING:
    from cnnkit.settings.config import TrainConfig

# quintic Newton-Schulz coefficients chosen for the steepest slope at zero: three iterations push every
# singular value into roughly [0.5, 1.5], which trains as well as exact orthogonalisation (Muon's write-up)
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
PRETRAINED_HEAD_RATE = 10  # over pretrained weights --lr is the head's rate, and the backbone's is this much less


def orthogonalize(matrix: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Approximately U V^T for matrix = U S V^T: the same directions with all singular values near 1."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float() / (matrix.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):  # x <- a x + (b G + c G^2) x with G = x x^T, in three fused matrix products
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x if wide else x.T).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked `orthogonalize=True`, Nesterov SGD for the rest.

    One optimiser for both keeps one learning-rate schedule and one state to checkpoint. In Muon groups
    each filter bank is kept at norm sqrt(out_channels) (airbench): its scale is irrelevant before batch
    norm, and a fixed norm makes `lr` a fixed relative step size for the whole run. In SGD groups
    `weight_decay` is the share of each weight decayed per step at the group's peak rate (airbench's
    decay), so groups of very different rates decay alike.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool = True):
        super().__init__(
            groups, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0, "orthogonalize": False}
        )
        for group in self.param_groups:
            group["peak_lr"] = group["lr"]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:  # each group in a few multi-tensor ops: a small net's step is mostly overhead
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"] / group["peak_lr"]
            grads = [p.grad for p in params]
            if decay:
                grads = list(torch._foreach_add(grads, params, alpha=decay))
            buffers = [self._momentum_buffer(p) for p in params]
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads)
            updates = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
            if group["orthogonalize"]:
                norms = torch._foreach_norm(params)  # rescaled on the device: no copy from the host, no sync
                torch._foreach_clamp_min_(norms, 1e-12)
                torch._foreach_div_(params, norms)
                torch._foreach_mul_(params, [len(p) ** 0.5 for p in params])
                updates = [orthogonalize(u.reshape(len(u), -1)).view_as(u) for u in updates]
            torch._foreach_add_(params, updates, alpha=-lr)

    def _momentum_buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:  # not setdefault: that would allocate zeros every step
            state["momentum_buffer"] = torch.zeros_like(p)
        return state["momentum_buffer"]


# PyTorch's optimisers by name: (parameter groups, config) -> optimiser
TORCH_OPTIMIZERS = {
    "sgd": lambda groups, cfg: torch.optim.SGD(
        groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
    ),
    "adam": lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.peak_lr),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.peak_lr),
    "rmsprop": lambda groups, cfg: torch.optim.RMSprop(groups, lr=cfg.peak_lr, momentum=cfg.momentum),
}
OPTIMIZERS = (*TORCH_OPTIMIZERS, "muon")


def build_optimizer(model: nn.Module, cfg: TrainConfig, spec: ModelSpec) -> torch.optim.Optimizer:
    """The optimiser cfg names, over parameter groups: decayed weights, spared biases and norms, and the
    classifier head apart when it has its own rate (or is trained by SGD beside Muon)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise CnnkitError(f"unknown optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    head = _head_parameters(model, cfg, spec) if cfg.head_lr is not None or cfg.optimizer == "muon" else []
    in_head = {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
    # weight decay on conv and linear weights only: decaying biases and norm scales just hurts
    groups = [
        {"params": [p for p in rest if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if head:
        head_lr = cfg.peak_lr if cfg.head_lr is None else cfg.head_lr
        groups.append({"params": head, "weight_decay": cfg.weight_decay, "lr": head_lr})
    if cfg.optimizer == "muon":  # hidden weights by Muon; biases, norms and the head by Nesterov SGD
        groups[0] = {
            "params": groups[0]["params"],
            "orthogonalize": True,
            "lr": cfg.muon_lr,
            "momentum": cfg.muon_momentum,
        }
        groups[1]["weight_decay"] = cfg.weight_decay  # airbench decays biases too
        return Muon(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return TORCH_OPTIMIZERS[cfg.optimizer](groups, cfg)


def _head_parameters(model: nn.Module, cfg: TrainConfig, spec: ModelSpec) -> list[nn.Parameter]:
    flag = "--head-lr" if cfg.head_lr is not None else "--optimizer muon"
    return [p for p in spec.head_module(model, flag).parameters() if p.requires_grad]
