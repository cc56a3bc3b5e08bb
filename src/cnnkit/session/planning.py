"""What a run decides as it goes: the rate of --lr auto, from a range test, and the steps of --budget, from a
timed warm-up (then again as the run goes). Each decision goes into the run's plan (`RunPlan`, in plan.json),
and config.yaml gets the settings with it applied, so that a resumed or repeated run takes it as it is."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from cnnkit.core.progress import say
from cnnkit.data.augment import Augment
from cnnkit.data.loader import DeviceBatches
from cnnkit.runs.folder import LR_FIND, PLAN
from cnnkit.runs.records import RunRecord
from cnnkit.session.context import RunContext
from cnnkit.training.budget import RESERVE_SECONDS, RESERVE_SHARE, Costs, measure_costs
from cnnkit.training.events import Callback
from cnnkit.training.lr_find import RULE, range_test, unit_rate, with_rate
from cnnkit.training.schedule import Length, default_warmup, format_bends
from cnnkit.training.stopping import TrainingDiverged
from cnnkit.training.trainer import EARLY_SHARE, Trainer

REPLAN_EVERY = 0.1  # once every step is of the late kind, the steps are planned again every this share of the run ...
REPLAN_CHANGE = 0.01  # ... and changed when they differ by more than this share (each change bends the decay)
# ... from at least this many late steps: one slow step of a short run is no trend (a 12-step run of a large backbone
# was cut to 9 on one, and ended 10% early)
LEAST_LATE_STEPS = 6
PACE_AGREES = 0.25  # a pace within this share of the last check's is a trend, and the plan follows it in full


def train_batches(ctx: RunContext) -> DeviceBatches:
    """The shuffled, augmented training batches, on the run's device: this process's share of each one."""
    cfg = ctx.cfg
    # every augmentation setting is filled in by `prepare`
    assert cfg.translate is not None and cfg.flip is not None and cfg.rotate is not None and cfg.scale is not None
    assert cfg.jitter is not None and cfg.erase is not None
    augment = Augment(cfg.translate, cfg.flip, cfg.turns, cfg.rotate, cfg.scale, cfg.jitter, cfg.erase)
    return DeviceBatches(
        ctx.data.splits["train"],
        cfg.batch_size,
        ctx.preprocess,
        sampler=cfg.sampler,
        augment=augment,
        seed=cfg.seed,
        share=(ctx.machine.rank, ctx.machine.world_size),
    )


def loss_weights(ctx: RunContext) -> torch.Tensor | None:
    """--class-weights balanced: each class's loss weighed by the inverse of its share of the training images
    (scikit-learn's "balanced": images / (classes x the class's images)), so a small class pulls on the weights
    as hard as a large one. A class with no training image keeps weight 1 (only label smoothing reaches it)."""
    if ctx.cfg.class_weights == "none":
        return None
    classes = len(ctx.data.classes)
    labels = ctx.data.splits["train"].labels
    counts = torch.bincount(labels, minlength=classes).float()
    weights = torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), 1.0)
    return weights.to(ctx.machine.device)


def find_lr(ctx: RunContext, train: DeviceBatches) -> None:
    """--lr auto: the range test's rate, into the run's plan (a resumed or repeated run takes it as it is), and
    its curve to lr_find.json (drawn in the report)."""
    test = range_test(Trainer(ctx.model, ctx.spec, train, unit_rate(ctx.cfg), ctx.machine))
    rate = ctx.machine.share(test.suggestion)  # every process trains at the main one's rate
    if rate is None:
        raise TrainingDiverged(
            "the learning-rate range test saw no finite loss, even at a rate of 1e-7", ctx.machine.bf16
        )
    found = with_rate(ctx.cfg, rate)
    ctx.plan.lr, ctx.plan.head_lr = found.peak_lr, found.head_lr if ctx.cfg.starts_pretrained else None
    _settle(ctx)
    ctx.folder.write_json(LR_FIND, dataclasses.asdict(test))
    say(f"lr auto: {found.head_lr or found.lr:g}, {RULE} ({len(test.rates)} steps of the range test)")


def plan_budget(ctx: RunContext, trainer: Trainer, record: RunRecord, elapsed: float) -> list[Callback]:
    """Plan the steps that fit the --budget from a measured warm-up, into the run's plan (and so config.yaml):
    a resumed or repeated run takes exactly these steps, on any machine. Returns the callback that plans them
    again as the run goes (none for a schedule without a warm-up)."""
    cfg, splits = ctx.cfg, ctx.data.splits
    assert cfg.budget is not None
    reserve = RESERVE_SECONDS + RESERVE_SHARE * cfg.budget
    deadline = time.perf_counter() + cfg.budget - elapsed - reserve  # for training and testing
    processes = ctx.machine.world_size  # each evaluates its share
    eval_images = (-(-len(splits["val"]) // processes), -(-len(splits["test"]) // processes) if cfg.test else 0)
    costs = measure_costs(trainer, eval_images, cfg.budget, cfg.tta)
    left = deadline - time.perf_counter()
    steps = ctx.machine.share(costs.most_steps(left))  # one plan, the main process's
    if costs.training(0, 1, 1) + costs.test > left:  # not even one step: said with the run's other warnings
        record.budget_warning = (
            f"the budget of {cfg.budget:g}s is shorter than one step and the test take on this machine now (the "
            f"test alone: {costs.test:.1f}s), so the run took 1 step and went over; give a longer --budget, or "
            "run it when the machine is less busy"
        )
    trainer.plan(dataclasses.replace(trainer.length, steps=steps))
    ctx.plan.steps = steps
    _settle(ctx)
    record.budget_seconds = cfg.budget
    passes = steps / len(trainer.train_batches)
    say(f"budget {cfg.budget:g}s: {steps} steps ({passes:,.1f} passes), planned from a warm-up measured here")
    warmup_steps = round(default_warmup(cfg.schedule, cfg.warmup) * steps)
    return [Replanning(ctx, costs, deadline, warmup_steps)] if 0 < warmup_steps < steps else []


class Replanning(Callback):
    """--budget's later plans, so that a machine that slows down (or speeds up) after the few steps timed for the
    first plan still ends on time. Each goes into the run's plan, so a repeat takes exactly these steps and rates.

    - At the end of the schedule's warm-up, from the time its steps really took: the warm-up keeps its steps and
      the schedule its shape; the plan gets the new length, with the warm-up's share of it.
    - Then, once every step is of the late kind (the whitening's bias has stopped learning), every REPLAN_EVERY
      of the run, from the time the steps since the last check took (a machine that slows late in a run shows in
      them at once, where a mean over every late step lags behind it): a one-cycle decay bends at the step reached,
      from its rate there straight down to zero at the new end; the plan gets the bend, and the step the bias
      stopped at."""

    def __init__(self, ctx: RunContext, costs: Costs, deadline: float, warmup_steps: int):
        self.ctx, self.costs, self.deadline, self.warmup_steps = ctx, costs, deadline, warmup_steps
        self.started = time.perf_counter()
        self.late: tuple[int, float] | None = None  # the step from which every step is of the late kind, and when
        self.checked = (0, 0.0)  # the step of the last check in the decay, and when
        self.pace = 1.0  # the time the steps checked last took, over their planned time
        self.next_check = 0

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        done = trainer.scheduler.last_epoch
        if done == self.warmup_steps:
            self._after_warmup(trainer, done)
        if self.late is None and done >= max(self.warmup_steps, trainer.early_steps if trainer.learns_early else 0):
            self.late = self.checked = (done, time.perf_counter())
            self.next_check = done + max(self._every(trainer), LEAST_LATE_STEPS)
        elif self.late and done == self.next_check < trainer.total_steps and self.ctx.cfg.schedule == "onecycle":
            self._in_decay(trainer, done, self.late[0])
            self.next_check = done + self._every(trainer)

    def _after_warmup(self, trainer: Trainer, done: int) -> None:
        now = time.perf_counter()
        self.pace = pace = (now - self.started) / self.costs.training(0, done, trainer.total_steps)  # 1.1: 10% slower
        seconds, early = (self.deadline - now) / pace, trainer.length.early_steps
        least = math.ceil(done / EARLY_SHARE) if trainer.learns_early else done + 1  # the bias keeps its share ...
        steps = self.costs.most_steps(seconds, done, least)
        if trainer.learns_early and steps == least:  # ... unless that does not fit: then it stops learning now
            early = done
            steps = min(least, self.costs.most_steps(seconds, done, done + 1, early))
        steps = self.ctx.machine.share(steps)
        if steps != trainer.total_steps:
            self.ctx.plan.early_steps = early
            length = dataclasses.replace(trainer.length, steps=steps, warmup=done / steps, early_steps=early)
            self._replan(trainer, done, length)
            pace_note = f"{pace:.2f}x their planned time"
            say(f"budget: {steps} steps in all, planned again after the warm-up's {done} ({pace_note})")

    def _in_decay(self, trainer: Trainer, done: int, start: int) -> None:
        now, total = time.perf_counter(), trainer.total_steps
        (last, when), self.checked = self.checked, (done, now)
        pace = (now - when) / self.costs.training(last, done, total, early=start)
        steps = self.ctx.machine.share(self.costs.most_steps((self.deadline - now) / pace, done, done + 1, start))
        left, previous, self.pace = total - done, self.pace, pace
        if abs(pace / previous - 1) > PACE_AGREES:  # a pace seen once may be a stalled write, no trend: one plan
            steps = min(max(steps, done + max(1, left // 2)), done + left + left // 2)  # moves by half the steps left
        if abs(steps - total) <= max(1, REPLAN_CHANGE * total):  # a step more or less is noise
            return
        bends = (*trainer.length.bends, (done, total))
        early = trainer.early_steps if trainer.learns_early else None  # where the bias stopped, whatever the length
        self.ctx.plan.bends, self.ctx.plan.early_steps = format_bends(bends), early
        self._replan(trainer, done, Length(steps, self.warmup_steps / steps, bends, early))
        since = f"{pace:.2f}x the planned time of the steps since step {last}"
        say(f"budget: {steps} steps in all, planned again at step {done} ({since})")

    def _replan(self, trainer: Trainer, done: int, length: Length) -> None:
        """The run's length from step `done` on, planned so that its steps so far stay as they were."""
        trainer.plan(length, done)
        self.ctx.plan.steps, self.ctx.plan.warmup = length.steps, length.warmup
        _settle(self.ctx)

    @staticmethod
    def _every(trainer: Trainer) -> int:
        return max(1, round(REPLAN_EVERY * trainer.total_steps))


def _settle(ctx: RunContext) -> None:
    """What the run has decided, in plan.json, and the settings with it in config.yaml: a resumed or repeated
    run takes them as they are."""
    ctx.folder.write_json(PLAN, dataclasses.asdict(ctx.plan))
    ctx.folder.write_config(ctx.settings)
