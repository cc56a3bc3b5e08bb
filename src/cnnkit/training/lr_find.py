"""The learning-rate range test (Smith 2015, fastai's `lr_find`): train a few steps while the rate grows
exponentially from tiny to huge, follow the smoothed loss, and stop once it diverges. Everything the steps
changed (weights, optimiser, RNGs) is put back, so a run then trains as if the test never happened.

The rule for the suggested rate: a tenth of the rate at which the smoothed loss was lowest (Smith's rule,
fastai's `lr_min`). It reads the lowest point, not the steepest slope, so an early spike of the loss cannot
pull it to a tiny rate (Lightning #1767), and only finite losses are candidates (Lightning #14248).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import bar
from cnnkit.training.optimizers import PRETRAINED_HEAD_RATE
from cnnkit.training.trainer import Trainer
from cnnkit.training.warmup import endless_batches, undone

if TYPE_CHECKING:  # training reads the settings it is given; it never builds them
    from cnnkit.settings.config import TrainConfig

RATES = (1e-7, 10.0)  # the sweep's first and last rate: every useful rate lies between
STEPS = 100  # fastai's default: enough points for a curve, a few seconds on a CPU
SMOOTHING = 0.98  # weight of the past in the loss's moving average: one batch's loss is noise
DIVERGED = 4.0  # the sweep stops once the smoothed loss is this many times its lowest
SUGGESTED_SHARE = 0.1  # the suggestion: this share of the rate with the lowest smoothed loss
RULE = "a tenth of the rate where the smoothed loss was lowest"


@dataclass
class RangeTest:
    rates: list[float]  # the rate of each step taken
    losses: list[float]  # each step's loss, NaN or infinite where it was
    smoothed: list[float]  # the debiased moving average of the finite losses up to each step (NaN before any)
    suggestion: float | None  # None when no step's loss was finite


def range_test(trainer: Trainer, steps: int = STEPS, rates: tuple[float, float] = RATES) -> RangeTest:
    """Sweep the rate of every parameter group from `rates[0]` to `rates[1]` times its peak rate over `steps`
    training steps (the trainer's peak rate should be 1), and undo them."""
    peaks = list(trainer.scheduler.base_lrs)
    taken: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, finite_steps, lowest = 0.0, 0, math.inf
    with undone(trainer), bar(steps, "lr range test", unit="step") as progress:
        trainer.model.train()
        batches = endless_batches(trainer.train_batches)
        for step in range(steps):
            rate = rates[0] * (rates[1] / rates[0]) ** (step / max(1, steps - 1))
            for group, peak in zip(trainer.optimizer.param_groups, peaks, strict=True):
                group["lr"] = peak * rate
            step_loss = float(trainer.train_step(*next(batches)))
            # the global batch's loss (the shares are equal): every process stops at the same step
            loss = trainer.machine.sum([step_loss])[0] / trainer.machine.world_size
            progress.update()
            taken.append(rate)
            losses.append(loss)
            if math.isfinite(loss):
                average, finite_steps = SMOOTHING * average + (1 - SMOOTHING) * loss, finite_steps + 1
            smoothed.append(average / (1 - SMOOTHING**finite_steps) if finite_steps else math.nan)
            lowest = min(lowest, smoothed[-1]) if finite_steps else lowest
            if not math.isfinite(loss) or smoothed[-1] > DIVERGED * lowest:
                break
    return RangeTest(taken, losses, smoothed, suggest(taken, smoothed))


def suggest(rates: list[float], smoothed: list[float]) -> float | None:
    """SUGGESTED_SHARE of the rate with the lowest finite smoothed loss; None when there is none."""
    finite = [(loss, rate) for rate, loss in zip(rates, smoothed, strict=True) if math.isfinite(loss)]
    return min(finite)[1] * SUGGESTED_SHARE if finite else None


def unit_rate(cfg: TrainConfig) -> TrainConfig:
    """The settings a range test trains with: a peak rate of 1 for the rate it finds, which over pretrained
    weights is the new head's (the backbone's is PRETRAINED_HEAD_RATE times smaller, as in a run)."""
    if cfg.optimizer == "muon":
        raise CnnkitError("the range test finds one rate, and muon has two (--lr, --muon-lr): give both")
    if cfg.starts_pretrained:
        return dataclasses.replace(cfg, lr=1 / PRETRAINED_HEAD_RATE, head_lr=1.0)
    return dataclasses.replace(cfg, lr=1.0)


def with_rate(cfg: TrainConfig, rate: float) -> TrainConfig:
    """The settings with the rate a range test found, split as `unit_rate` split it."""
    if cfg.starts_pretrained:
        return dataclasses.replace(cfg, lr=_rounded(rate / PRETRAINED_HEAD_RATE), head_lr=_rounded(rate))
    return dataclasses.replace(cfg, lr=_rounded(rate))


def _rounded(rate: float) -> float:
    return float(f"{rate:.3g}")  # three digits: a rate read off a noisy curve has no more
