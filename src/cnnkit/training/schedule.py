"""Learning-rate schedules: a multiplier of the peak rate for every step, with a linear warm-up first."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cnnkit.errors import CnnkitError

if TYPE_CHECKING:
    from cnnkit.config import TrainConfig

SCHEDULES = ("constant", "step", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.25  # share of steps a one-cycle schedule spends rising to the peak rate, by default
ONECYCLE_START = 0.04  # ... from this fraction of the peak (PyTorch's OneCycleLR starts at peak / 25)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps in all: --steps, else --epochs whole passes (else one pass, until --budget plans)."""
    return cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch


def lr_factor(schedule: str, warmup: float, total_steps: int, step: int) -> float:
    """Multiplier of the peak rate at `step`: a linear warm-up, then the schedule's shape."""
    if schedule not in SCHEDULES:
        raise CnnkitError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    warmup_steps = round(warmup * total_steps)
    if step < warmup_steps:
        start = ONECYCLE_START if schedule == "onecycle" else 0.0
        return start + (1 - start) * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "step":
        return 0.1 ** sum(progress >= m for m in (0.5, 0.75))  # x0.1 at half and three quarters of training
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return 1 - progress  # linear down to zero
    return 1.0


def default_warmup(schedule: str, warmup: float | None) -> float:
    return warmup if warmup is not None else ONECYCLE_WARMUP if schedule == "onecycle" else 0.0
