"""The training loop: optimiser, learning-rate schedule, and one pass per epoch, readable top to bottom."""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnkit.config import TrainConfig
from cnnkit.data.loader import DeviceBatches, Normalize
from cnnkit.data.sets import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.evaluation import predict_logits
from cnnkit.machine import Machine
from cnnkit.models import unwrap
from cnnkit.optimizers import build_optimizer
from cnnkit.progress import bar, say

ONECYCLE_WARMUP = 0.25  # share of steps a one-cycle schedule spends rising to the peak rate, by default
ONECYCLE_START = 0.04  # ... from this fraction of the peak (PyTorch's OneCycleLR starts at peak / 25)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float


def lr_factor(schedule: str, warmup: float, total_steps: int, step: int) -> float:
    """Multiplier of the peak rate at `step`: a linear warm-up, then the schedule's shape."""
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


def default_warmup(cfg: TrainConfig) -> float:
    return cfg.warmup if cfg.warmup is not None else ONECYCLE_WARMUP if cfg.schedule == "onecycle" else 0.0


class TrainingInterrupted(CnnkitError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed."""


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM ask the loop to checkpoint and stop after the current step, instead of
    killing it mid-write; a second Ctrl-C stops at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread
        yield stop
        return

    def ask(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def fit(model: nn.Module, train: DeviceBatches, val: DeviceBatches | None, cfg: TrainConfig, machine: Machine,
        save: Callable[[dict], None] | None = None, resume: dict | None = None,
        stop: threading.Event | None = None) -> Iterator[tuple[EpochResult, nn.Module]]:
    """Train for cfg.epochs, yielding each epoch's numbers and the model to keep (the weight average,
    with --ema) as soon as the epoch is done.

    `save(state)` is called with the whole training state at every epoch's end, every
    cfg.checkpoint_every steps, and when `stop` is set (then TrainingInterrupted is raised);
    `resume` is such a state, from which training continues exactly.
    """
    optimizer = build_optimizer(model, cfg)
    # an average of recent weights generalises better than the last step's (and smooths the end of training)
    ema = None
    if cfg.ema:
        ema = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, cfg.schedule, default_warmup(cfg), cfg.epochs * len(train)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    parts = {"model": unwrap(model), "optimizer": optimizer, "scheduler": scheduler, "ema": ema}
    pos = _restore(resume, parts, train) if resume else Position()

    def checkpoint():
        _check_finite(pos)
        if save is not None:
            save(_training_state(parts, train, pos))

    while pos.epoch <= cfg.epochs:
        if pos.step == 0:
            pos.order, pos.lr = train.new_order(), optimizer.param_groups[0]["lr"]
        for interrupted in train_steps(model, train, optimizer, scheduler, loss_fn, machine, ema, pos, cfg, stop):
            checkpoint()
            if interrupted:
                raise TrainingInterrupted(f"stopped at epoch {pos.epoch}, step {pos.step}; a checkpoint is saved")
        _check_finite(pos)
        kept = ema.module if ema else model
        val_loss = val_accuracy = None
        if val is not None:
            logits, labels = predict_logits(kept, val, machine, cfg.tta)
            val_loss = nn.functional.cross_entropy(logits, labels).item()
            val_accuracy = (logits.argmax(1) == labels).float().mean().item()
        seen = max(1, pos.seen)  # every step of the epoch may have been skipped
        result = EpochResult(pos.epoch, float(pos.loss_sum) / seen, int(pos.correct) / seen, val_loss,
                             val_accuracy, pos.lr, pos.seconds)
        pos = Position(epoch=pos.epoch + 1)
        yield result, kept
        checkpoint()


def train_steps(model, batches: DeviceBatches, optimizer, scheduler, loss_fn, machine: Machine,
                ema: AveragedModel | None, pos: Position, cfg: TrainConfig, stop: threading.Event | None):
    """Run the rest of pos.epoch, updating `pos`; yields True or False whenever a checkpoint is due
    (True: stop was asked for)."""
    model.train()
    started = time.perf_counter()
    with bar(len(batches), f"epoch {pos.epoch}/{cfg.epochs}", unit="batch") as progress:
        progress.update(pos.step)
        for images, labels in batches.iterate(pos.order, pos.step, pos.epoch):
            with machine.autocast():
                logits = model(images)
                loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            if cfg.skip_nonfinite and not loss.isfinite():  # reads the loss each step: only with this flag
                _skip_step(scheduler, pos, loss)
                progress.update()
                continue
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            bad = torch.as_tensor(pos.first_bad_step, device=loss.device)  # recorded on the device: no sync
            pos.first_bad_step = torch.where((bad < 0) & ~loss.isfinite(), pos.step, bad)
            pos.loss_sum = pos.loss_sum + loss.detach() * len(labels)
            pos.correct = pos.correct + (logits.argmax(1) == labels).sum()
            pos.seen += len(labels)
            pos.step += 1
            progress.update()
            if not progress.disable and progress.n % 20 == 0:
                progress.set_postfix(loss=f"{float(pos.loss_sum) / pos.seen:.4f}")
            asked_to_stop = stop is not None and stop.is_set()
            due = cfg.checkpoint_every and scheduler.last_epoch % cfg.checkpoint_every == 0
            if asked_to_stop or (due and pos.step < len(batches)):
                machine.sync()
                pos.seconds += time.perf_counter() - started
                yield asked_to_stop
                started = time.perf_counter()
    machine.sync()
    pos.seconds += time.perf_counter() - started


def _skip_step(scheduler, pos: Position, loss: torch.Tensor) -> None:
    """Leave the weights as they are, halve the rate for the rest of the run, and move on."""
    scheduler.base_lrs = [lr / 2 for lr in scheduler.base_lrs]
    scheduler.step()
    pos.step += 1
    say(f"skipped epoch {pos.epoch}, step {pos.step}: the loss was {loss.item()}; learning rate halved")


def _check_finite(pos: Position) -> None:
    bad = int(pos.first_bad_step)
    if bad >= 0:
        raise CnnkitError(f"the training loss became NaN or infinite at epoch {pos.epoch}, step {bad + 1}; "
                          "the last good checkpoint is kept. Lower --lr (e.g. by 10x), add --warmup, "
                          "or try --precision fp32")


def _training_state(parts: dict, train: DeviceBatches, pos: Position) -> dict:
    return {
        **{name: part.state_dict() for name, part in parts.items() if part is not None},
        "position": dataclasses.asdict(pos),
        "rng": {"torch": torch.get_rng_state(), "data": train.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def _restore(state: dict, parts: dict, train: DeviceBatches) -> Position:
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state[name])
    torch.set_rng_state(state["rng"]["torch"])
    train.generator.set_state(state["rng"]["data"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    device = train.labels.device
    pos = Position(**state["position"])
    pos.order = pos.order.to(device) if pos.order is not None else None
    pos.loss_sum = torch.as_tensor(pos.loss_sum).to(device)
    pos.correct = torch.as_tensor(pos.correct).to(device)
    return pos


def compile_warmup(model: nn.Module, data: ImageSet, normalize: Normalize, train_size: int, eval_sizes: set[int],
                   machine: Machine, tta: bool) -> float:
    """Let torch.compile compile before the clock starts: a training step at the training batch size and
    the evaluation pass at every evaluation batch size, whose effects on weights, norm statistics and
    gradients are undone. Returns the seconds spent."""
    started = time.perf_counter()
    saved = {k: v.clone() for k, v in unwrap(model).state_dict().items()}

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size) % len(data)
        return normalize(data.images[index].to(machine.device)), data.labels[index].to(machine.device)

    model.train()
    images, labels = batch(train_size)
    with machine.autocast():
        nn.functional.cross_entropy(model(images), labels).backward()
    predict_logits(model, [batch(size) for size in sorted(eval_sizes)], machine, tta)
    model.zero_grad(set_to_none=True)
    unwrap(model).load_state_dict(saved)
    machine.sync()
    return time.perf_counter() - started
