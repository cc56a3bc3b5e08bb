"""The training loop, readable top to bottom: `Trainer.train_step` is one optimiser step, `Trainer.fit`
runs the epochs around it, writes checkpoints and tells its callbacks what happened.

With several processes (torchrun), the model is wrapped in DistributedDataParallel, each process steps on
its share of every global batch, and the epoch's numbers are summed over the processes."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnkit.core.machine import Machine
from cnnkit.core.progress import bar, say
from cnnkit.data.loader import DeviceBatches
from cnnkit.models import ModelSpec, unwrap
from cnnkit.training.evaluation import predict_logits
from cnnkit.training.events import Callback, EpochResult
from cnnkit.training.optimizers import build_optimizer
from cnnkit.training.position import Position, check_finite, restore_rng
from cnnkit.training.schedule import Length
from cnnkit.training.stopping import TrainingDiverged, TrainingInterrupted

if TYPE_CHECKING:  # training reads the settings it is given; it never builds them
    from cnnkit.settings.config import TrainConfig

AGREE_EVERY = 16  # with several processes, a stop is agreed on every this many steps: each check is a collective
# the whitening's bias learns over this share of the steps (airbench's; never: 1.5 points less on a 50-class folder,
# a tenth: 3 less on photos); then the backward pass skips the first block's full-size input gradient (1.4x faster)
EARLY_SHARE = 0.3


class Trainer:
    """A model, its optimiser, schedule and weight average, and where training stands."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        train: DeviceBatches,
        cfg: TrainConfig,
        machine: Machine,
        loss_weights: torch.Tensor | None = None,
    ):
        """`loss_weights`: one per class (--class-weights), on the machine's device; None weighs all alike."""
        self.net, self.train_batches, self.cfg, self.machine = model, train, cfg, machine
        whitening = spec.first_conv_module(unwrap(model), "--whiten") if cfg.whiten else None
        self.learns_early = [whitening.bias] if whitening is not None and whitening.bias is not None else []
        self.model = machine.data_parallel(model)  # steps through DDP; evaluates the plain `net`, with no collectives
        self.optimizer = build_optimizer(unwrap(model), cfg, spec)
        # an average of recent weights generalises better than the last step's (and smooths the end of training)
        self.ema = (
            AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            if cfg.ema
            else None
        )
        self.plan(Length.of(cfg, len(train)))
        self.backbone = spec.backbone_parameters(model, "--freeze-epochs") if cfg.freeze_epochs else []
        self.loss_fn = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=cfg.label_smoothing)
        self.pos = Position()
        self.callbacks: list[Callback] = []
        self.stop_training, self._clock = False, 0.0

    def plan(self, length: Length, done: int = 0) -> None:
        """Set the run's length and schedule: before the first step, or after `done` (--budget's later plans)."""
        self.length = length
        self.epochs = -(-length.steps // len(self.train_batches))  # the last one may be partial
        early = length.early_steps
        self.early_steps = math.ceil(EARLY_SHARE * length.steps) if early is None else early  # the bias learns
        factor = length.factor(self.cfg.schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor, last_epoch=done - 1)

    @property
    def total_steps(self) -> int:
        return self.length.steps

    def steps_in_epoch(self, epoch: int) -> int:
        return min(len(self.train_batches), self.total_steps - (epoch - 1) * len(self.train_batches))

    def learn(self, params: Sequence[torch.Tensor], learning: bool) -> None:
        """Start or stop `params` learning (DDP knows the parameters that learned when it wrapped the model)."""
        if any(p.requires_grad != learning for p in params):
            for p in params:
                p.requires_grad_(learning)
            self.model = self.machine.data_parallel(self.net)

    @property
    def kept_model(self) -> nn.Module:
        """The model to validate and keep: the weight average with --ema, else the trained model."""
        return self.ema.module if self.ema is not None else self.net

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
        rate = self.optimizer.param_groups[0]["lr"]  # the rate this step takes (the conv and linear weights')
        self._optimizer_step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.pos.record(loss.detach(), logits, labels)
        self.pos.rates.append([self.scheduler.last_epoch, rate])  # recorded as used: a plot derives nothing
        return loss.detach()

    def _optimizer_step(self) -> None:
        """The update. A rate or decay past what float32 holds (--lr 1e38) makes torch raise mid-step: that is a
        divergence, stopped with the same advice as a loss gone infinite, not a traceback."""
        try:
            self.optimizer.step()
        except RuntimeError as e:
            if "without overflow" not in str(e):  # torch's words for a Python number no float32 can hold
                raise
            where = f"epoch {self.pos.epoch}, step {self.pos.step + 1}"
            what = f"the update overflowed float32 at {where} (a far too high --lr or --weight-decay)"
            raise TrainingDiverged(what, self.machine.bf16) from None

    def fit(
        self, val: DeviceBatches | None, save: Callable[[dict], None] | None = None, stop: threading.Event | None = None
    ) -> None:
        """Train from the current position to the last epoch. `save(state)` gets the whole training state at
        every epoch's end, every cfg.checkpoint_every steps, and when `stop` is set (then TrainingInterrupted
        is raised); `load_state_dict(state)` continues from it exactly."""
        for callback in self.callbacks:
            callback.on_train_begin(self)
        while self.pos.epoch <= self.epochs and not self.stop_training:
            if self.pos.step == 0:
                self.pos.order, self.pos.lr = self.train_batches.new_order(), self.optimizer.param_groups[0]["lr"]
            self._train_epoch(save, stop)
            check_finite(self.pos, self.model, self.machine)  # before this epoch is validated, kept or saved
            result = self._epoch_result(val)
            if self.pos.seen == 0 or not math.isfinite(result.val_loss if result.val_loss is not None else 0.0):
                # finite weights whose every step or validation overflows are no model either
                nothing = "no step whose loss was finite" if self.pos.seen == 0 else "a non-finite validation loss"
                raise TrainingDiverged(f"epoch {result.epoch} ended with {nothing}", self.machine.bf16)
            self.pos = Position(epoch=self.pos.epoch + 1)
            for callback in self.callbacks:
                callback.on_epoch_end(self, result)
            self.stop_training = self.machine.any_rank(self.stop_training)  # a callback on one process stops all
            self._save(save)
        for callback in self.callbacks:
            callback.on_train_end(self)

    def _train_epoch(self, save: Callable[[dict], None] | None, stop: threading.Event | None) -> None:
        pos, batches = self.pos, self.train_batches
        self.model.train()
        self.learn(self.backbone, pos.epoch > self.cfg.freeze_epochs)  # --freeze-epochs: the head alone first
        self._clock = time.perf_counter()
        steps = self.steps_in_epoch(pos.epoch)
        # to the pass's end, as a --budget plan may move the epoch's (a step ends it); none if stopped at its end
        left = batches.iterate(pos.order, pos.step, pos.epoch, stop_step=None if pos.step < steps else steps)
        with bar(steps, f"epoch {pos.epoch}/{self.epochs}", unit="batch") as progress:
            progress.update(pos.step)
            for images, labels in left:
                self.learn(self.learns_early, self.scheduler.last_epoch < self.early_steps)
                loss = self.train_step(images, labels)
                progress.update()
                if not progress.disable and progress.n % 20 == 0:
                    progress.set_postfix(loss=f"{float(pos.loss_sum) / max(1, pos.seen):.4f}")
                for callback in self.callbacks:
                    callback.on_step_end(self, loss)
                steps = progress.total = self.steps_in_epoch(pos.epoch)  # a --budget plan may have moved the end
                interrupted, stopped = self._stops(stop, last=pos.step == steps)
                self._checkpoint_if_due(save, interrupted, last=pos.step == steps)
                self.stop_training = self.stop_training or stopped
                if stopped or pos.step == steps:
                    break
        self._lap()

    def _stops(self, stop: threading.Event | None, last: bool) -> tuple[bool, bool]:
        """(asked to stop by a signal, stopped by a callback), the same on every process: with several, agreed
        on every AGREE_EVERY steps and at the epoch's end (a collective, and on a GPU a sync), else not yet."""
        flags = [stop is not None and stop.is_set(), self.stop_training]
        if self.machine.world_size == 1:
            return flags[0], flags[1]
        if self.pos.step % AGREE_EVERY and not last:
            return False, False
        interrupted, stopped = self.machine.sum([float(flag) for flag in flags])
        return interrupted > 0, stopped > 0

    def _checkpoint_if_due(self, save: Callable[[dict], None] | None, interrupted: bool, last: bool) -> None:
        """Checkpoint every cfg.checkpoint_every steps (the epoch's end has its own), and when asked to stop."""
        every = self.cfg.checkpoint_every
        if interrupted or (every and self.scheduler.last_epoch % every == 0 and not last):
            self._lap()
            check_finite(self.pos, self.model, self.machine)  # never a checkpoint of poisoned weights
            self._save(save)
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

    def _save(self, save: Callable[[dict], None] | None) -> None:
        if save is not None:
            save(self.state_dict())
        self._clock = time.perf_counter()

    def _epoch_result(self, val: DeviceBatches | None) -> EpochResult:
        """The epoch's numbers, the same on every process: `val` is this process's share of the validation
        split, whose logits are gathered whole."""
        val_loss = val_accuracy = None
        if val is not None:
            self.machine.align_buffers(self.kept_model)
            predicted = predict_logits(self.kept_model, val, self.machine)  # TTA's six views: for the test alone
            logits, labels = (self.machine.gather_rows(t) for t in predicted)
            val_loss = nn.functional.cross_entropy(logits, labels).item()
            val_accuracy = (logits.argmax(1) == labels).float().mean().item()
        loss_sum, correct, seen = self._totals()
        seen = max(1, seen)  # every step of the epoch may have been skipped
        pos = self.pos
        result = (pos.epoch, loss_sum / seen, correct / seen, val_loss, val_accuracy, pos.lr, pos.seconds)
        return EpochResult(*result, rates=pos.rates)

    def _totals(self) -> tuple[float, int, int]:
        """The epoch's loss sum, right answers and images so far, over every process."""
        pos = self.pos
        loss_sum, correct, seen = self.machine.sum([float(pos.loss_sum), float(pos.correct), float(pos.seen)])
        return loss_sum, round(correct), round(seen)

    def _skip_step(self, loss: torch.Tensor) -> None:
        """Leave the weights as they are, halve the rate for the rest of the run, and move on."""
        self.scheduler.base_lrs = [lr / 2 for lr in self.scheduler.base_lrs]
        self.scheduler.step()
        self.pos.step += 1
        say(f"skipped epoch {self.pos.epoch}, step {self.pos.step}: the loss was {loss.item()}; learning rate halved")

    def _parts(self) -> dict:
        parts = {"model": unwrap(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler, "ema": self.ema}
        return {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict:
        """Everything an exact resume needs: weights, optimiser, schedule, average, position and every RNG. The
        same on every process but for the epoch's sums (summed here) and each process's own model RNG (one row
        each); the data's order and augmentation are global, so any number of processes can take it up."""
        position = dataclasses.asdict(self.pos)
        if self.machine.world_size > 1:
            position["loss_sum"], position["correct"], position["seen"] = self._totals()
        cuda = self.machine.device.type == "cuda"
        return {
            **{name: part.state_dict() for name, part in self._parts().items()},
            "position": position,
            "processes": self.machine.world_size,
            "rng": {
                "torch": self.machine.gather_rows(torch.get_rng_state()[None]),
                "data": self.train_batches.generator.get_state(),
                "cuda": self.machine.gather_rows(torch.cuda.get_rng_state(self.machine.device)[None]) if cuda else [],
            },
        }

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
        step = self.scheduler.last_epoch
        restore_rng(state["rng"], self.train_batches.generator, self.machine, (self.cfg.seed, step))
        device = self.train_batches.labels.device
        pos = Position(**state["position"])
        if not self.machine.is_main:  # the epoch's sums so far are every process's: the main one carries them
            pos.loss_sum, pos.correct, pos.seen = 0.0, 0, 0
        pos.rates = [[int(step), float(rate)] for step, rate in pos.rates]  # numbers, or refused as damaged
        pos.order = pos.order.to(device) if pos.order is not None else None
        pos.loss_sum = torch.as_tensor(pos.loss_sum).to(device)
        pos.correct = torch.as_tensor(pos.correct).to(device)
        self.pos = pos
