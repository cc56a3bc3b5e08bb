"""The rules every training setting must follow, checked before any work starts: each message names the flag
and says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnkit.core.errors import CnnkitError
from cnnkit.data.images import RESIZE_RULES
from cnnkit.data.loader import SAMPLERS
from cnnkit.data.splits import parse_split
from cnnkit.models import AUTO, check_model_name
from cnnkit.models.fast import ACTIVATIONS
from cnnkit.settings.presets import preset_settings
from cnnkit.training.optimizers import OPTIMIZERS
from cnnkit.training.schedule import SCHEDULES, default_warmup, parse_bends

if TYPE_CHECKING:
    from cnnkit.core.machine import Machine
    from cnnkit.settings.config import TrainConfig

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
CLASS_WEIGHTS = ("none", "balanced")  # --class-weights: every class alike, or each by the inverse of its share


def check_settings(cfg: TrainConfig) -> None:
    _require(cfg.epochs is None or cfg.epochs >= 1, "epochs", cfg.epochs, "must be at least 1")
    _require(cfg.steps is None or cfg.steps >= 1, "steps", cfg.steps, "must be at least 1")
    _require(cfg.epochs is None or cfg.steps is None, "epochs", cfg.epochs, "and --steps: give one of the two")
    _require(
        cfg.budget is None or (cfg.epochs is None and cfg.steps is None),
        "budget",
        cfg.budget,
        "plans the steps itself: leave out --epochs and --steps",
    )
    _require(cfg.budget is None or cfg.budget > 0, "budget", cfg.budget, "must be a positive number of seconds")
    _require(cfg.rotate is None or 0 <= cfg.rotate <= 180, "rotate", cfg.rotate, "must be 0 to 180 degrees")
    _require(cfg.scale is None or 0 <= cfg.scale < 1, "scale", cfg.scale, "must be in [0, 1), e.g. 0.1")
    _require(cfg.jitter is None or 0 <= cfg.jitter < 1, "jitter", cfg.jitter, "must be in [0, 1), e.g. 0.2")
    _require(cfg.erase is None or 0 <= cfg.erase <= 1, "erase", cfg.erase, "must be in [0, 1], e.g. 0.25")
    _require(
        cfg.activation is None or cfg.activation in ACTIVATIONS,
        "activation",
        cfg.activation,
        "must be one of " + ", ".join(ACTIVATIONS),
    )
    _require(cfg.freeze_epochs >= 0, "freeze_epochs", cfg.freeze_epochs, "must be 0 or more")
    starts = [k.replace("_", "-") for k in ("pretrained", "pretrained_weights", "init_from") if getattr(cfg, k)]
    if len(starts) > 1:
        raise CnnkitError(f"--{' and --'.join(starts)} are ways to start: give one of them")
    _require(
        cfg.freeze_epochs == 0 or bool(starts),
        "freeze_epochs",
        cfg.freeze_epochs,
        "keeps pretrained weights fixed while the head learns: add --pretrained, --pretrained-weights or --init-from",
    )
    _require(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every, "must be 0 or more")
    _require(0 <= cfg.seed < 2**63, "seed", cfg.seed, "must be a whole number from 0 to 2^63 - 1")
    _require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be at least 1")
    _require(cfg.lr == AUTO or cfg.peak_lr > 0, "lr", cfg.lr, "must be a positive number, e.g. 0.001, or auto")
    _require(cfg.lr != AUTO or cfg.head_lr is None, "head_lr", cfg.head_lr, "is found by --lr auto: leave it out")
    _require(cfg.lr != AUTO or cfg.optimizer != "muon", "lr", cfg.lr, "cannot be found for muon's two rates: give both")
    _require(cfg.head_lr is None or cfg.head_lr > 0, "head_lr", cfg.head_lr, "must be a positive number")
    _require(cfg.muon_lr > 0, "muon_lr", cfg.muon_lr, "must be a positive number, e.g. 0.2")
    _require(0 <= cfg.momentum < 1, "momentum", cfg.momentum, "must be in [0, 1)")
    _require(0 <= cfg.muon_momentum < 1, "muon_momentum", cfg.muon_momentum, "must be in [0, 1)")
    _require(cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay, "must be 0 or more")
    _require(0 <= cfg.ema < 1, "ema", cfg.ema, "must be in [0, 1), e.g. 0.999")
    _require(0 <= cfg.label_smoothing < 1, "label_smoothing", cfg.label_smoothing, "must be in [0, 1)")
    _require(0 <= cfg.val_fraction < 1, "val_fraction", cfg.val_fraction, "must be in [0, 1)")
    _require(cfg.warmup is None or 0 <= cfg.warmup < 1, "warmup", cfg.warmup, "must be in [0, 1)")
    _require(cfg.early_steps is None or cfg.early_steps >= 0, "early_steps", cfg.early_steps, "must be 0 or more")
    _check_bends(cfg)
    _require(cfg.dropout is None or 0 <= cfg.dropout < 1, "dropout", cfg.dropout, "must be in [0, 1)")
    _require(0 <= cfg.prune < 1, "prune", cfg.prune, "must be in [0, 1): the share of weights set to zero, e.g. 0.5")
    _require(
        cfg.image_size is None or 4 <= cfg.image_size <= 1024,
        "image_size",
        cfg.image_size,
        "must be between 4 and 1024 pixels",
    )
    _require(cfg.translate is None or cfg.translate >= 0, "translate", cfg.translate, "must be 0 or more")
    _require(cfg.optimizer in OPTIMIZERS, "optimizer", cfg.optimizer, "must be one of " + ", ".join(OPTIMIZERS))
    _require(cfg.schedule in SCHEDULES, "schedule", cfg.schedule, "must be one of " + ", ".join(SCHEDULES))
    _require(not cfg.memory_budget or cfg.memory_budget > 0, "memory_budget", cfg.memory_budget, "must be > 0")
    _require(cfg.resize in RESIZE_RULES, "resize", cfg.resize, "must be one of " + ", ".join(RESIZE_RULES))
    _require(
        cfg.class_weights in CLASS_WEIGHTS, "class_weights", cfg.class_weights, "must be " + " or ".join(CLASS_WEIGHTS)
    )
    _require(cfg.sampler in SAMPLERS, "sampler", cfg.sampler, "must be " + " or ".join(SAMPLERS))
    _require(cfg.device in DEVICES, "device", cfg.device, "must be one of " + ", ".join(DEVICES))
    _require(cfg.precision in PRECISIONS, "precision", cfg.precision, "must be one of " + ", ".join(PRECISIONS))
    check_model_name(cfg.model)
    preset_settings(cfg.preset)  # an unknown preset is named with the valid ones
    if cfg.split is not None:
        parse_split(cfg.split)


def check_processes(cfg: TrainConfig, machine: Machine) -> None:
    """What several processes need: a global batch that shares out evenly, and GPUs for --sync-bn."""
    processes = machine.world_size
    if processes > 1 and cfg.batch_size % processes:
        low = cfg.batch_size - cfg.batch_size % processes
        raise CnnkitError(
            f"--batch-size {cfg.batch_size} is the global batch, shared by {processes} processes, so it must divide "
            f"by {processes}; try {low or processes} or {low + processes}"
        )
    if cfg.sync_bn and processes > 1 and machine.device.type != "cuda":
        raise CnnkitError("--sync-bn synchronises batch norm between GPU processes; on CPUs leave it off")


def _check_bends(cfg: TrainConfig) -> None:
    """--budget's bends of a one-cycle decay: their steps rising past the warm-up, each before the end it changed."""
    bends = parse_bends(cfg.bends)
    if not bends:
        return
    steps = [step for step, _ in bends]
    warmup_steps = round(default_warmup(cfg.schedule, cfg.warmup) * (cfg.steps or 0))
    fits = steps == sorted(set(steps)) and warmup_steps < steps[0] and all(step < end for step, end in bends)
    fits = fits and cfg.schedule == "onecycle" and (cfg.steps is None or steps[-1] < cfg.steps)
    _require(fits, "bends", cfg.bends, "must be as --budget writes them: STEP:END points of a onecycle decay, in order")


def _require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise CnnkitError(f"--{key.replace('_', '-')} {value} {rule}")
