"""Compile before the clock starts: torch.compile compiles on first use, and a timed run must not pay for it."""

from __future__ import annotations

import copy
import time

import torch

from cnnkit.evaluation import predict_logits
from cnnkit.training.trainer import Trainer


def compile_warmup(trainer: Trainer, eval_sizes: set[int], tta: bool) -> float:
    """Run one real training step at the training batch size and the evaluation pass at every evaluation
    batch size, then put back the state from before (weights, optimiser, schedule, position, RNGs), so the
    run trains as if the warm-up never happened. Returns the seconds spent."""
    started = time.perf_counter()
    before = copy.deepcopy(trainer.state_dict())
    batches = trainer.train_batches

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size, device=batches.labels.device) % len(batches.labels)
        return batches.preprocess(batches.images[index]), batches.labels[index]

    trainer.model.train()
    trainer.train_step(*batch(min(batches.batch_size, len(batches.labels))))
    predict_logits(trainer.model, [batch(size) for size in sorted(eval_sizes)], trainer.machine, tta)
    trainer.load_state_dict(before)
    trainer.machine.sync()
    return time.perf_counter() - started
