"""The training loop: optimiser, learning-rate schedule, and one pass per epoch, readable top to bottom."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
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
from cnnkit.progress import bar

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


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # weight decay on conv and linear weights only: decaying biases and norm scales just hurts
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


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


def fit(model: nn.Module, train: DeviceBatches, val: DeviceBatches | None, cfg: TrainConfig,
        machine: Machine) -> Iterator[tuple[EpochResult, nn.Module]]:
    """Train for cfg.epochs, yielding each epoch's numbers and the model to keep (the weight average,
    with --ema) as soon as the epoch is done."""
    optimizer = build_optimizer(model, cfg)
    # an average of recent weights generalises better than the last step's (and smooths the end of training)
    ema = None
    if cfg.ema:
        ema = AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    total_steps = cfg.epochs * len(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, cfg.schedule, default_warmup(cfg), total_steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_epoch(model, train, optimizer, scheduler, loss_fn, machine, ema,
                                                 f"epoch {epoch}/{cfg.epochs}")
        if not math.isfinite(train_loss):
            raise CnnkitError(f"the training loss became {train_loss} in epoch {epoch}; "
                              "lower --lr (e.g. by 10x) or use --schedule onecycle, which warms up")
        kept = ema.module if ema else model
        val_loss = val_accuracy = None
        if val is not None:
            logits, labels = predict_logits(kept, val, machine, cfg.tta)
            val_loss = nn.functional.cross_entropy(logits, labels).item()
            val_accuracy = (logits.argmax(1) == labels).float().mean().item()
        yield EpochResult(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr,
                          time.perf_counter() - started), kept


def train_epoch(model, batches, optimizer, scheduler, loss_fn, machine: Machine, ema: AveragedModel | None,
                desc: str) -> tuple[float, float]:
    model.train()
    # running sums stay on the device: reading them every step would stall a GPU on each batch
    loss_sum = torch.zeros((), device=machine.device)
    correct = torch.zeros((), device=machine.device, dtype=torch.long)
    seen = 0
    with bar(len(batches), desc, unit="batch") as progress:
        for images, labels in batches:
            with machine.autocast():
                logits = model(images)
                loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            progress.update()
            if not progress.disable and progress.n % 20 == 0:
                progress.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    return loss_sum.item() / seen, correct.item() / seen


def compile_warmup(model: nn.Module, data: ImageSet, normalize: Normalize, batch_sizes: list[int],
                   machine: Machine) -> float:
    """Let torch.compile compile before the clock starts: a training and an evaluation step per batch
    shape, whose effects on weights, norm statistics and gradients are undone. Returns the seconds spent."""
    started = time.perf_counter()
    saved = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    for size in batch_sizes:
        images = normalize(data.images[:size].to(machine.device))
        labels = data.labels[:size].to(machine.device)
        model.train()
        with machine.autocast():
            nn.functional.cross_entropy(model(images), labels).backward()
        model.eval()
        with torch.no_grad(), machine.autocast():
            model(images)
    model.zero_grad(set_to_none=True)
    unwrap(model).load_state_dict(saved)
    if machine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started
