"""The training loop, readable top to bottom: `Trainer.train_step` is one optimiser step, `Trainer.fit`
runs the epochs around it, writes checkpoints and tells its callbacks what happened."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnkit.config import TrainConfig
from cnnkit.data.loader import DeviceBatches
from cnnkit.evaluation import predict_logits
from cnnkit.machine import Machine
from cnnkit.models import ModelSpec, unwrap
from cnnkit.optimizers import build_optimizer
from cnnkit.progress import bar, say
from cnnkit.training.events import Callback, EpochResult
from cnnkit.training.schedule import default_warmup, lr_factor
from cnnkit.training.stopping import TrainingDiverged, TrainingInterrupted


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps in all: --steps, else --epochs whole passes (else one pass, until --budget plans)."""
    return cfg.steps if cfg.steps is not None else (cfg.epochs or 1) * steps_per_epoch


@dataclass
class Position:
    """Where training stands inside an epoch: with weights, optimiser and RNG states, all a resume needs."""

    epoch: int = 1
    step: int = 0  # batches of this epoch done
    order: torch.Tensor | None = None  # this epoch's shuffled order of the training images
    loss_sum: torch.Tensor | float = 0.0  # running sums stay on the device: reading them each step stalls a GPU
    correct: torch.Tensor | int = 0
    seen: int = 0
    seconds: float = 0.0
    lr: float = 0.0  # the learning rate the epoch started with
    first_bad_step: torch.Tensor | int = -1  # the first step whose loss was not finite

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        bad = torch.as_tensor(self.first_bad_step, device=loss.device)  # recorded on the device: no sync
        self.first_bad_step = torch.where((bad < 0) & ~loss.isfinite(), self.step, bad)
        self.loss_sum = self.loss_sum + loss * len(labels)
        self.correct = self.correct + (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        self.step += 1


class Trainer:
    """A model, its optimiser, schedule and weight average, and where training stands."""

    def __init__(self, model: nn.Module, spec: ModelSpec, train: DeviceBatches, cfg: TrainConfig, machine: Machine):
        self.model, self.train_batches, self.cfg, self.machine = model, train, cfg, machine
        self.optimizer = build_optimizer(unwrap(model), cfg, spec)
        # an average of recent weights generalises better than the last step's (and smooths the end of training)
        self.ema = (
            AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            if cfg.ema
            else None
        )
        self.plan(planned_steps(cfg, len(train)))
        self.backbone = spec.backbone_parameters(model, "--freeze-epochs") if cfg.freeze_epochs else []
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.pos = Position()
        self.callbacks: list[Callback] = []
        self.stop_training = False
        self._clock = 0.0

    def plan(self, total_steps: int) -> None:
        """Set the run's length and its schedule before the first step (--budget plans it from a warm-up)."""
        self.total_steps = total_steps
        self.epochs = -(-total_steps // len(self.train_batches))  # the last one may be partial
        warmup = default_warmup(self.cfg.schedule, self.cfg.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, self.cfg.schedule, warmup, total_steps)
        )

    def steps_in_epoch(self, epoch: int) -> int:
        return min(len(self.train_batches), self.total_steps - (epoch - 1) * len(self.train_batches))

    @property
    def kept_model(self) -> nn.Module:
        """The model to validate and keep: the weight average with --ema, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimiser step on one batch: forward, loss, backward, update, schedule and weight average.
        Returns the batch's mean loss, left on the device."""
        with self.machine.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.skip_nonfinite and not loss.isfinite():  # reads the loss each step: only with this flag
            self._skip_step(loss)
            return loss.detach()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.pos.record(loss.detach(), logits, labels)
        return loss.detach()

    def fit(
        self, val: DeviceBatches | None, save: Callable[[dict], None] | None = None, stop: threading.Event | None = None
    ) -> None:
        """Train from the current position to the last epoch. `save(state)` gets the whole training state at
        every epoch's end, every cfg.checkpoint_every steps, and when `stop` is set (then TrainingInterrupted
        is raised); `load_state_dict(state)` continues from it exactly."""
        while self.pos.epoch <= self.epochs and not self.stop_training:
            if self.pos.step == 0:
                self.pos.order, self.pos.lr = self.train_batches.new_order(), self.optimizer.param_groups[0]["lr"]
            self._train_epoch(save, stop)
            self._check_finite()  # before anything of this epoch is validated, kept or checkpointed
            result = self._epoch_result(val)
            if self.pos.seen == 0 or not math.isfinite(result.val_loss if result.val_loss is not None else 0.0):
                # finite weights whose every step or validation overflows are no model either
                nothing = "no step whose loss was finite" if self.pos.seen == 0 else "a non-finite validation loss"
                raise TrainingDiverged(f"epoch {result.epoch} ended with {nothing}")
            self.pos = Position(epoch=self.pos.epoch + 1)
            for callback in self.callbacks:
                callback.on_epoch_end(self, result)
            self._save(save)
        for callback in self.callbacks:
            callback.on_train_end(self)

    def _train_epoch(self, save: Callable[[dict], None] | None, stop: threading.Event | None) -> None:
        pos, batches = self.pos, self.train_batches
        self.model.train()
        for p in self.backbone:  # --freeze-epochs: the head learns alone first, on the pretrained features
            p.requires_grad_(pos.epoch > self.cfg.freeze_epochs)
        self._clock = time.perf_counter()
        steps = self.steps_in_epoch(pos.epoch)
        with bar(steps, f"epoch {pos.epoch}/{self.epochs}", unit="batch") as progress:
            progress.update(pos.step)
            for images, labels in batches.iterate(pos.order, pos.step, pos.epoch, stop_step=steps):
                loss = self.train_step(images, labels)
                progress.update()
                if not progress.disable and progress.n % 20 == 0:
                    progress.set_postfix(loss=f"{float(pos.loss_sum) / max(1, pos.seen):.4f}")
                for callback in self.callbacks:
                    callback.on_step_end(self, loss)
                self._checkpoint_if_due(save, stop, last=pos.step == steps)
                if self.stop_training:
                    break
        self._lap()

    def _checkpoint_if_due(self, save: Callable[[dict], None] | None, stop: threading.Event | None, last: bool) -> None:
        """Checkpoint every cfg.checkpoint_every steps (the epoch's end has its own) and when asked to stop,
        which every process decides together."""
        interrupted = self.machine.any_rank(stop is not None and stop.is_set())
        every = self.cfg.checkpoint_every
        if interrupted or (every and self.scheduler.last_epoch % every == 0 and not last):
            self._lap()
            self._checkpoint(save)
            if interrupted:
                raise TrainingInterrupted(
                    f"stopped at epoch {self.pos.epoch}, step {self.pos.step}; a checkpoint is saved"
                )

    def _lap(self) -> None:
        """Add the time since the last lap to the epoch's seconds (checkpoint writes are not training)."""
        self.machine.sync()
        now = time.perf_counter()
        self.pos.seconds += now - self._clock
        self._clock = now

    def _checkpoint(self, save: Callable[[dict], None] | None) -> None:
        self._check_finite()  # never a checkpoint of poisoned weights
        self._save(save)

    def _save(self, save: Callable[[dict], None] | None) -> None:
        if save is not None:
            save(self.state_dict())
        self._clock = time.perf_counter()

    def _epoch_result(self, val: DeviceBatches | None) -> EpochResult:
        val_loss = val_accuracy = None
        if val is not None:
            logits, labels = predict_logits(self.kept_model, val, self.machine)  # TTA's six views: for the test alone
            val_loss = nn.functional.cross_entropy(logits, labels).item()
            val_accuracy = (logits.argmax(1) == labels).float().mean().item()
        pos = self.pos
        seen = max(1, pos.seen)  # every step of the epoch may have been skipped
        return EpochResult(
            pos.epoch, float(pos.loss_sum) / seen, int(pos.correct) / seen, val_loss, val_accuracy, pos.lr, pos.seconds
        )

    def _skip_step(self, loss: torch.Tensor) -> None:
        """Leave the weights as they are, halve the rate for the rest of the run, and move on."""
        self.scheduler.base_lrs = [lr / 2 for lr in self.scheduler.base_lrs]
        self.scheduler.step()
        self.pos.step += 1
        say(f"skipped epoch {self.pos.epoch}, step {self.pos.step}: the loss was {loss.item()}; learning rate halved")

    def _check_finite(self) -> None:
        """Stop on a non-finite loss, or on weights gone non-finite while such steps were skipped: nothing
        poisoned is ever checkpointed or kept. One device sync, at checkpoints and epoch ends only."""
        bad = int(self.pos.first_bad_step)
        weights_bad = not bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())
        if not self.machine.any_rank(bad >= 0 or weights_bad):  # every process stops together, whichever saw it
            return
        epoch = self.pos.epoch
        if bad >= 0:
            what = f"the training loss became NaN or infinite at epoch {epoch}, step {bad + 1}"
        elif weights_bad:
            what = f"the weights became NaN or infinite by epoch {epoch}, step {self.pos.step}"
        else:
            what = f"training on another process became NaN or infinite at epoch {epoch}"
        raise TrainingDiverged(what)

    def _parts(self) -> dict:
        parts = {"model": unwrap(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler, "ema": self.ema}
        return {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict:
        """Everything an exact resume needs: weights, optimiser, schedule, average, position and every RNG."""
        return {
            **{name: part.state_dict() for name, part in self._parts().items()},
            "position": dataclasses.asdict(self.pos),
            "rng": {
                "torch": torch.get_rng_state(),
                "data": self.train_batches.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"]["torch"])
        self.train_batches.generator.set_state(state["rng"]["data"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        device = self.train_batches.labels.device
        pos = Position(**state["position"])
        pos.order = pos.order.to(device) if pos.order is not None else None
        pos.loss_sum = torch.as_tensor(pos.loss_sum).to(device)
        pos.correct = torch.as_tensor(pos.correct).to(device)
        self.pos = pos
