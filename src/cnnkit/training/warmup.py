"""Steps taken before the run that leave no trace: the compile warm-up, and the timing that plans a --budget.

torch.compile compiles on first use, and a timed run must not pay for it; a budget is planned from steps
timed on this machine. Either way the run then trains as if those steps never happened.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cnnkit.data.loader import DeviceBatches
from cnnkit.training.evaluation import predict_logits
from cnnkit.training.trainer import Trainer


@contextmanager
def undone(trainer: Trainer) -> Iterator[None]:
    """Whatever the block does to the trainer (weights, optimiser, schedule, position, RNGs) is put back."""
    before = copy.deepcopy(trainer.state_dict())
    try:
        yield
    finally:
        trainer.load_state_dict(before)


def endless_batches(batches: DeviceBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches, shuffled anew at each pass, for as long as they are asked for."""
    while True:
        yield from batches.iterate(batches.new_order())


def sample_batch(batches: DeviceBatches, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` of the batches' own images (repeated if there are fewer), preprocessed, unaugmented."""
    index = torch.arange(size, device=batches.labels.device) % len(batches.labels)
    return batches.preprocess(batches.images[index]), batches.labels[index]


def compile_warmup(trainer: Trainer, eval_sizes: set[int], tta: bool) -> float:
    """Run one real training step at the training batch size (with the whitening's bias learning and fixed:
    two graphs) and the evaluation pass at every evaluation batch size, undone afterwards. Returns the seconds
    spent."""
    started = time.perf_counter()
    batches = trainer.train_batches
    with undone(trainer):
        trainer.model.train()
        share = batches.batch_size // batches.processes  # each process steps on its share of the global batch
        for learning in (True, False) if trainer.learns_early else (True,):  # the whitening's bias, early and late
            trainer.learn(trainer.learns_early, learning)
            trainer.train_step(*sample_batch(batches, min(share, len(batches.labels))))
        predict_logits(trainer.net, [sample_batch(batches, size) for size in sorted(eval_sizes)], trainer.machine, tta)
    trainer.machine.sync()
    return time.perf_counter() - started
