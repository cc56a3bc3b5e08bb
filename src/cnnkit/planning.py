"""What a run settles before its first step, and writes to config.yaml so that a resumed or repeated run
takes it as it is: the rate of --lr auto, from a range test, and the steps of --budget, from a timed warm-up."""

from __future__ import annotations

import dataclasses

from cnnkit.context import RunContext
from cnnkit.data.augment import Augment
from cnnkit.data.loader import DeviceBatches
from cnnkit.progress import say
from cnnkit.rundir import CONFIG, LR_FIND
from cnnkit.training.budget import plan_steps
from cnnkit.training.lr_find import RULE, range_test, unit_rate, with_rate
from cnnkit.training.stopping import TrainingDiverged
from cnnkit.training.trainer import Trainer


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
    ctx.cfg = with_rate(ctx.cfg, rate)
    ctx.folder.write_text(CONFIG, dataclasses.replace(ctx.cfg, out=None).to_yaml())
    ctx.folder.write_json(LR_FIND, dataclasses.asdict(test))
    say(f"lr auto: {ctx.cfg.head_lr or ctx.cfg.lr:g}, {RULE} ({len(test.rates)} steps of the range test)")


def plan_budget(ctx: RunContext, trainer: Trainer, record: dict, elapsed: float) -> None:
    """Plan the steps that fit the --budget from a measured warm-up, and write them to config.yaml: a
    resumed or repeated run takes exactly these steps, on any machine."""
    cfg, splits = ctx.cfg, ctx.data.splits
    assert cfg.budget is not None
    processes = ctx.machine.world_size  # each evaluates its share
    eval_images = (-(-len(splits["val"]) // processes), -(-len(splits["test"]) // processes) if cfg.test else 0)
    steps = ctx.machine.share(plan_steps(trainer, eval_images, cfg.budget, cfg.budget - elapsed, cfg.tta))  # one plan
    trainer.plan(steps)
    ctx.cfg = dataclasses.replace(cfg, steps=steps, budget=None)
    ctx.folder.write_text(CONFIG, dataclasses.replace(ctx.cfg, out=None).to_yaml())
    record["budget_seconds"] = cfg.budget
    passes = steps / len(trainer.train_batches)
    say(f"budget {cfg.budget:g}s: {steps} steps ({passes:,.1f} passes), planned from a warm-up measured here")
