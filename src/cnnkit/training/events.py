"""What the training loop tells its watchers: the events a `Callback` can take, and each epoch's numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cnnkit.training.trainer import Trainer


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    rates: list[list[float]] = field(default_factory=list)  # [step of the run, the rate it took], each step's


class Callback:
    """Watches training without touching the loop: a logger, a plot, a learning-rate finder, an early stop.

    Override the events you need. Setting `trainer.stop_training = True` ends training after the current
    step or epoch; the run then tests and saves as usual.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step (of a resumed run too)."""

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """After each optimiser step; `loss` is still on the device (reading it makes a GPU wait)."""

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        """After each epoch and its validation, before the epoch's checkpoint."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""
