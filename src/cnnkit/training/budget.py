"""A time budget: how many optimiser steps fit in it, planned from a short warm-up measured on this machine,
and planned again as the run goes (cnnkit.session.planning), from the time its steps really took.

Each plan moves the trainer's `Length`, and the run's plan (plan.json, and config.yaml) records it as `steps`
(the later ones with the warm-up's share of them, and the bends of the decay): the run then repeats exactly,
anywhere, and the learning-rate schedule knows its length from the start.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cnnkit.training.checkpoint import save_checkpoint
from cnnkit.training.evaluation import eval_batch, predict_logits
from cnnkit.training.trainer import EARLY_SHARE, Trainer
from cnnkit.training.warmup import endless_batches, sample_batch, undone

# kept back for what the plans cannot see: the closing reads and writes (half a second on MNIST), and the last
# tenth of the steps, after the last plan (measured: the runs then end within 1-3% of the budget)
RESERVE_SECONDS, RESERVE_SHARE = 0.5, 0.01
UNTIMED_STEPS = 2  # the first steps set up kernels and memory (on a CPU, the first took 1.5x the rest): not timed
# share of the budget spent timing steps, within these seconds; the later plans follow the machine, so the first
# needs to be near, not exact (the steps timed are undone: time the run does not train)
TIMED_SHARE, TIMING = 0.01, (0.5, 2.0)
TIMED_WINDOWS = 3  # at most
MIN_TIMED_STEPS = 2  # a window
# images an evaluation is timed on, on a CPU, its cost scaled per image: there a batch of 64 costs per image what
# the run's larger ones do, within the noise or a little more (a GPU is timed at the run's batch: it would idle)
EVAL_SAMPLE = 64
EVAL_TIMINGS = 2  # the quicker of two: one timed TTA test batch after the untimed one still ran 1.4x slow


@dataclass(frozen=True)
class Costs:
    """What a run's parts take on this machine, in seconds: a step while the whitening's bias learns (the first
    EARLY_SHARE of the steps) and one after, the validation and checkpoints that end each pass, and the test."""

    early_step: float
    late_step: float
    per_pass: float
    test: float
    steps_per_pass: int

    def training(self, first: int, last: int, total: int, early: int | None = None) -> float:
        """Seconds of steps `first` to `last` (not included) of a run of `total` steps, whose first `early` steps
        (by default EARLY_SHARE of them) are of the early kind."""
        early_end = min(max(EARLY_SHARE * total if early is None else early, first), last)
        steps = (early_end - first) * self.early_step + (last - early_end) * self.late_step
        return steps + (last - first) * self.per_pass / self.steps_per_pass

    def most_steps(self, seconds: float, done: int = 0, least: int = 1, early: int | None = None) -> int:
        """The longest run (at least `least` steps) whose steps after the first `done` and test fit in `seconds`."""
        fits = lambda total: self.training(done, total, total, early) + self.test <= seconds  # noqa: E731
        low, high = least, least * 2
        while fits(high):  # a run's time grows with its steps: find one too long ...
            low, high = high, high * 2
        while high - low > 1:  # ... then halve the gap between the longest that fits and the shortest that does not
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def measure_costs(trainer: Trainer, eval_images: tuple[int, int], budget: float, tta: bool) -> Costs:
    """Time the run's parts on this machine, spending about TIMED_SHARE of the `budget`. `eval_images`: the
    validation images evaluated after every pass, and the test images at the end."""
    sample = eval_batch(trainer.train_batches.images.shape[-1])
    sample = min(sample, EVAL_SAMPLE) if trainer.machine.device.type == "cpu" else sample
    passes = [(eval_images[0], False), (eval_images[1], tta)]  # validation sees the plain model, the test TTA's views
    kinds = {(min(sample, n), views) for n, views in passes if n}  # validation and test often share one
    with undone(trainer):  # the run trains as if nothing had been measured
        early, late = _seconds_per_step(trainer, min(max(TIMED_SHARE * budget, TIMING[0]), TIMING[1]))
        timed = {kind: _seconds_per_eval_batch(trainer, *kind) for kind in kinds}  # seconds of each kind's batch
    validate, test = (timed[min(sample, n), views] * n / min(sample, n) if n else 0.0 for n, views in passes)
    # each pass ends in a validation and a checkpoint (and often the weights): on a small folder, with hundreds
    # of passes, those (and a small validation's fixed costs) weigh as much as training
    return Costs(early, late, validate + 2 * _seconds_per_write(trainer), test, len(trainer.train_batches))


def _seconds_per_write(trainer: Trainer) -> float:
    """Seconds to write the whole training state once, as each checkpoint is written."""
    state = trainer.state_dict()
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(Path(folder) / "untimed", state)  # the first one sets up what writing needs
        started = time.perf_counter()
        save_checkpoint(Path(folder) / "timed", state)
        return time.perf_counter() - started


def _seconds_per_step(trainer: Trainer, seconds: float) -> tuple[float, float]:
    """Seconds per step while the whitening's bias learns, and after: the later steps are quicker, so with it
    both kinds are timed, each for its share of the run and of the `seconds` (measuring costs the budget)."""
    if not trainer.learns_early:
        step = _seconds_per_step_now(trainer, seconds)
        return step, step
    learning = _seconds_per_step_now(trainer, EARLY_SHARE * seconds)
    trainer.learn(trainer.learns_early, False)
    try:
        return learning, _seconds_per_step_now(trainer, (1 - EARLY_SHARE) * seconds)
    finally:
        trainer.learn(trainer.learns_early, True)


def _seconds_per_step_now(trainer: Trainer, seconds: float) -> float:
    """Seconds per real training step (augmentation included), after the untimed first ones."""
    trainer.model.train()
    batches = endless_batches(trainer.train_batches)
    for _ in range(UNTIMED_STEPS):
        trainer.train_step(*next(batches))
    rates: list[float] = []
    timing = time.perf_counter()
    for _ in range(TIMED_WINDOWS):  # the median window: a hiccup of a busy machine in one does not count
        if rates and trainer.machine.any_rank(time.perf_counter() - timing > seconds):
            break  # steps this slow (a large backbone's) get fewer windows: the later plans follow the machine
        trainer.machine.sync()
        started, steps = time.perf_counter(), 0
        # every process takes as many steps as the slowest needs (the steps are in lockstep under DDP)
        while steps < MIN_TIMED_STEPS or trainer.machine.any_rank(
            time.perf_counter() - started < seconds / TIMED_WINDOWS
        ):
            trainer.train_step(*next(batches))
            steps += 1
            if steps >= MIN_TIMED_STEPS:
                trainer.machine.sync()
        rates.append((time.perf_counter() - started) / steps)
    return sorted(rates)[len(rates) // 2]


def _seconds_per_eval_batch(trainer: Trainer, size: int, tta: bool) -> float:
    """Seconds of one evaluation batch of `size` images (with its TTA views); a split of `size` images or fewer
    is timed whole, fixed costs and all."""
    batch = [sample_batch(trainer.train_batches, size)]
    predict_logits(trainer.kept_model, batch, trainer.machine, tta)  # untimed: sets up the evaluation kernels
    timings = []
    for _ in range(EVAL_TIMINGS):
        started = time.perf_counter()
        predict_logits(trainer.kept_model, batch, trainer.machine, tta)
        trainer.machine.sync()
        timings.append(time.perf_counter() - started)
    return min(timings)
