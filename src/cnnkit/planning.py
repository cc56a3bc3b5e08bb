"""What a run settles as it goes, and writes to config.yaml so that a resumed or repeated run takes it as it
is: the rate of --lr auto, from a range test, and the steps of --budget, from a timed warm-up (then again from
the schedule's own warm-up)."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from cnnkit.config import TrainConfig
from cnnkit.context import RunContext
from cnnkit.data.augment import Augment
from cnnkit.data.loader import DeviceBatches
from cnnkit.progress import say
from cnnkit.rundir import LR_FIND
from cnnkit.training.budget import RESERVE, Costs, measure_costs
from cnnkit.training.events import Callback
from cnnkit.training.lr_find import RULE, range_test, unit_rate, with_rate
from cnnkit.training.schedule import default_warmup
from cnnkit.training.stopping import TrainingDiverged
from cnnkit.training.trainer import EARLY_SHARE, Trainer


def train_batches(ctx: RunContext) -> DeviceBatches:
    """The shuffled, augmented training batches, on the run's device: this process's share of each one."""
    cfg = ctx.cfg
    # every augmentation setting is filled in by `prepare`
    assert cfg.translate is not None and cfg.flip is not None and cfg.rotate is not None and cfg.scale is not None
    assert cfg.jitter is not None and cfg.erase is not None
    augment = Augment(cfg.translate, cfg.flip, cfg.rotate, cfg.scale, cfg.jitter, cfg.erase)
    return DeviceBatches(
        ctx.data.splits["train"],
        cfg.batch_size,
        ctx.preprocess,
        shuffle=True,
        augment=augment,
        seed=cfg.seed,
        share=(ctx.machine.rank, ctx.machine.world_size),
    )


def find_lr(ctx: RunContext, train: DeviceBatches) -> None:
    """--lr auto: the range test's rate, written to config.yaml (a resumed or repeated run takes it as it is)
    and its curve to lr_find.json (drawn in the report)."""
    test = range_test(Trainer(ctx.model, ctx.spec, train, unit_rate(ctx.cfg), ctx.machine))
    rate = ctx.machine.share(test.suggestion)  # every process trains at the main one's rate
    if rate is None:
        raise TrainingDiverged("the learning-rate range test saw no finite loss, even at a rate of 1e-7")
    _settle(ctx, with_rate(ctx.cfg, rate))
    ctx.folder.write_json(LR_FIND, dataclasses.asdict(test))
    say(f"lr auto: {ctx.cfg.head_lr or ctx.cfg.lr:g}, {RULE} ({len(test.rates)} steps of the range test)")


def plan_budget(ctx: RunContext, trainer: Trainer, record: dict, elapsed: float) -> list[Callback]:
    """Plan the steps that fit the --budget from a measured warm-up, and write them to config.yaml: a
    resumed or repeated run takes exactly these steps, on any machine. Returns the callback that plans them
    again at the end of the schedule's warm-up (none for a schedule without one)."""
    cfg, splits = ctx.cfg, ctx.data.splits
    assert cfg.budget is not None
    deadline = time.perf_counter() + cfg.budget - elapsed - RESERVE * cfg.budget  # for training and testing
    processes = ctx.machine.world_size  # each evaluates its share
    eval_images = (-(-len(splits["val"]) // processes), -(-len(splits["test"]) // processes) if cfg.test else 0)
    costs = measure_costs(trainer, eval_images, cfg.budget, cfg.tta)
    left = deadline - time.perf_counter()
    steps = ctx.machine.share(costs.most_steps(left))  # one plan, the main process's
    if costs.training(0, 1, 1) + costs.test > left:  # not even one step: said with the run's other warnings
        record["budget_warning"] = (
            f"the budget of {cfg.budget:g}s is shorter than one step and the test take on this machine now (the "
            f"test alone: {costs.test:.1f}s), so the run took 1 step and went over; give a longer --budget, or "
            "run it when the machine is less busy"
        )
    trainer.plan(steps)
    _settle(ctx, dataclasses.replace(cfg, steps=steps, budget=None))
    record["budget_seconds"] = cfg.budget
    passes = steps / len(trainer.train_batches)
    say(f"budget {cfg.budget:g}s: {steps} steps ({passes:,.1f} passes), planned from a warm-up measured here")
    warmup_steps = round(default_warmup(cfg.schedule, cfg.warmup) * steps)
    return [SecondPlan(ctx, costs, deadline, warmup_steps)] if 0 < warmup_steps < steps else []


class SecondPlan(Callback):
    """--budget's second plan, when the schedule's warm-up has run: the steps after it are planned again from the
    time the warm-up's steps really took, so a machine that has slowed down (or sped up) since the few steps
    timed for the first plan still ends on time. The warm-up keeps its steps and the schedule its shape;
    config.yaml gets the new length, with the warm-up's share of it, so a repeat takes exactly these steps."""

    def __init__(self, ctx: RunContext, costs: Costs, deadline: float, warmup_steps: int):
        self.ctx, self.costs, self.deadline, self.done = ctx, costs, deadline, warmup_steps
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.scheduler.last_epoch != self.done:
            return
        pass_end = trainer.pos.epoch * len(trainer.train_batches)
        if trainer.total_steps <= pass_end:  # the last pass is under way: it ends as planned
            return
        now = time.perf_counter()
        pace = (now - self.started) / self.costs.training(0, self.done, trainer.total_steps)  # 1.1: 10% slower
        least = pass_end  # the pass under way ends as planned, and so does the whitening's bias learning:
        if trainer.learns_early:  # through every warm-up step, as in a repeat
            least = max(least, math.ceil(self.done / EARLY_SHARE))
        steps = self.ctx.machine.share(self.costs.most_steps((self.deadline - now) / pace, self.done, least))
        if steps == trainer.total_steps:
            return
        trainer.cfg = dataclasses.replace(self.ctx.cfg, steps=steps, warmup=self.done / steps)
        trainer.plan(steps, self.done)
        _settle(self.ctx, trainer.cfg)
        pace_note = f"{pace:.2f}x their planned time"
        say(f"budget: {steps} steps in all, planned again after the warm-up's {self.done} ({pace_note})")


def _settle(ctx: RunContext, cfg: TrainConfig) -> None:
    """The run's settings from now on, and in config.yaml: a resumed or repeated run takes them as they are."""
    ctx.cfg = cfg
    ctx.folder.write_config(cfg)
