"""Learning-rate schedules: a multiplier of the peak rate for every step, with a linear warm-up first."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from cnnkit.core.errors import CnnkitError

if TYPE_CHECKING:
    from cnnkit.settings.config import TrainConfig

SCHEDULES = ("constant", "step", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.25  # share of steps a one-cycle schedule spends rising to the peak rate, by default
ONECYCLE_START = 0.04  # ... from this fraction of the peak (PyTorch's OneCycleLR starts at peak / 25)


@dataclass(frozen=True)
class Length:
    """How long a run trains and how its rate moves: set from the settings, then moved by --budget's plans."""

    steps: int
    warmup: float  # the share of the steps warming up
    bends: tuple[tuple[int, int], ...] = ()  # where the one-cycle decay bent: (step, the length planned until then)
    early_steps: int | None = None  # with --whiten, the steps the bias learns in (None: EARLY_SHARE of them)

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int) -> Length:
        warmup = default_warmup(cfg.schedule, cfg.warmup)
        return cls(planned_steps(cfg, steps_per_epoch), warmup, parse_bends(cfg.bends), cfg.early_steps)

    def factor(self, schedule: str) -> Callable[[int], float]:
        """The multiplier of the peak rate at each step: the schedule, its warm-up, and the bends."""
        return partial(lr_factor, schedule, self.warmup, self.steps, bends=self.bends)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps in all: --steps, else --epochs whole passes (else one pass, until --budget plans)."""
    return cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch


def lr_factor(
    schedule: str, warmup: float, total_steps: int, step: int, bends: tuple[tuple[int, int], ...] = ()
) -> float:
    """Multiplier of the peak rate at `step`: a linear warm-up, then the schedule's shape. `bends`: where --budget
    planned a one-cycle decay again, as (step, the length planned until then)."""
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
        return _bent_decay(warmup_steps, bends, total_steps, step)
    return 1.0


def _bent_decay(peak: int, bends: tuple[tuple[int, int], ...], end: int, step: int) -> float:
    """Linear from 1 at `peak` down to zero at the planned end; at each bend, from the rate reached there down to
    zero at the new end. Each line is reckoned as the run reckoned it then, so a repeat takes the same rates."""
    start, rate = peak, 1.0
    for at, planned_end in bends:
        if step < at:
            return _falling(start, rate, planned_end, step)
        start, rate = at, _falling(start, rate, planned_end, at)
    return _falling(start, rate, end, step)


def _falling(start: int, rate: float, end: int, step: int) -> float:
    """The straight line from `rate` at `start` to zero at `end`, at `step` (zero from `end` on)."""
    return rate - rate * (step - start) / (end - start) if step < end else 0.0


def parse_bends(text: str | None) -> tuple[tuple[int, int], ...]:
    """`bends` as config.yaml holds it ("STEP:END,STEP:END"), as (step, end) pairs."""
    try:
        pairs = [point.split(":") for point in (text or "").split(",") if point]
        return tuple((int(step), int(end)) for step, end in pairs)
    except ValueError:
        raise CnnkitError(
            f"bends {text!r} must be STEP:END pairs joined by commas, as --budget writes them, e.g. 400:1250"
        ) from None


def format_bends(bends: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{step}:{end}" for step, end in bends)


def default_warmup(schedule: str, warmup: float | None) -> float:
    return warmup if warmup is not None else ONECYCLE_WARMUP if schedule == "onecycle" else 0.0
