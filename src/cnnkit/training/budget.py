"""A time budget: how many optimiser steps fit in it, planned from a short warm-up measured on this machine.

The plan is made once, before the first step, and written to config.yaml as `steps`: the run then repeats
exactly, anywhere, and the learning-rate schedule knows its length from the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch

from cnnkit.checkpoint import state_bytes
from cnnkit.evaluation import eval_batch, predict_logits
from cnnkit.training.trainer import Trainer
from cnnkit.training.warmup import sample_batch, undone

RESERVE = 0.04  # share of the budget kept back for what the plan cannot see: the closing writes, a busy machine
UNTIMED_STEPS = 2  # the first steps set up kernels and memory: slower than the rest, so not timed
TIMED_SHARE = 0.015  # share of the budget spent timing steps (at least MIN_TIMED_STEPS, at most 2 seconds)
MIN_TIMED_STEPS = 3
DISK_BYTES_PER_SECOND = 200e6  # a modest disk: each epoch writes the checkpoint, and often the weights


def plan_steps(trainer: Trainer, eval_images: tuple[int, int], budget: float, seconds_left: float, tta: bool) -> int:
    """The steps that end training and testing within `seconds_left` of a `budget` in seconds. `eval_images`:
    the validation images evaluated after every pass, and the test images at the end."""
    with undone(trainer):  # the run trains as if nothing had been measured
        step = _seconds_per_step(trainer, min(2.0, TIMED_SHARE * budget))
        per_image = _seconds_per_eval_image(trainer, tta)
    n_val, n_test = eval_images
    saved = state_bytes(trainer.state_dict())
    per_pass = n_val * per_image + 2 * saved / DISK_BYTES_PER_SECOND  # validation, checkpoint and weights
    left = seconds_left - RESERVE * budget - n_test * per_image
    return max(1, math.floor(left / (step + per_pass / len(trainer.train_batches))))


def _seconds_per_step(trainer: Trainer, seconds: float) -> float:
    """Seconds per real training step (augmentation included), after the untimed first ones."""
    trainer.model.train()
    batches = _endless(trainer)
    for _ in range(UNTIMED_STEPS):
        trainer.train_step(*next(batches))
    trainer.machine.sync()
    started, steps = time.perf_counter(), 0
    while steps < MIN_TIMED_STEPS or time.perf_counter() - started < seconds:
        trainer.train_step(*next(batches))
        steps += 1
        if steps >= MIN_TIMED_STEPS:
            trainer.machine.sync()
    return (time.perf_counter() - started) / steps


def _seconds_per_eval_image(trainer: Trainer, tta: bool) -> float:
    """Seconds per image of an evaluation pass (with its TTA views), at the evaluation batch size."""
    n = min(eval_batch(trainer.train_batches.images.shape[-1]), len(trainer.train_batches.labels))
    batch = [sample_batch(trainer.train_batches, n)]
    predict_logits(trainer.kept_model, batch, trainer.machine, tta)  # untimed: sets up the evaluation kernels
    started = time.perf_counter()
    predict_logits(trainer.kept_model, batch, trainer.machine, tta)
    trainer.machine.sync()
    return (time.perf_counter() - started) / n


def _endless(trainer: Trainer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from trainer.train_batches.iterate(trainer.train_batches.new_order())
