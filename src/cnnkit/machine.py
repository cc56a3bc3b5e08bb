"""Which device a run uses, and the precision and memory layout that pay off there."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnkit.errors import CnnkitError


@dataclass(frozen=True)
class Machine:
    device: torch.device
    bf16: bool  # autocast matmuls and convs to bfloat16: tensor cores, half the memory traffic
    channels_last: bool  # NHWC lets cuDNN pick its fastest convolution kernels

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def pick_machine(device: str = "auto", precision: str = "auto") -> Machine:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnkitError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise CnnkitError("--device mps was asked for, but this machine has no Apple GPU; use --device auto or cpu")
    on_cuda = device == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and on_cuda and torch.cuda.is_bf16_supported())
    return Machine(torch.device(device), bf16, channels_last=on_cuda)
