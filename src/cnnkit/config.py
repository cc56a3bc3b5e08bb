"""Every knob of a training run in one place: defaults, help text, validation and YAML round trip.

The CLI builds its `train` flags from these fields, so a flag, a config-file key and a keyword of
`cnnkit.train(...)` are always the same name with the same default.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnkit.data.images import RESIZE_RULES
from cnnkit.data.splits import parse_split
from cnnkit.errors import CnnkitError
from cnnkit.files import read_yaml
from cnnkit.models import AUTO, check_model_name
from cnnkit.optimizers import OPTIMIZERS
from cnnkit.presets import preset_settings
from cnnkit.training.schedule import SCHEDULES
from cnnkit.values import to_type

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def _knob(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    preset: str | None = _knob(None, "start from a tuned recipe (see `cnnkit presets`); other flags still override it")
    # data
    data: str = _knob("digits", "digits | mnist | fashion-mnist | cifar10 | cifar100 | PATH to an image folder")
    data_dir: str | None = _knob(None, "where named data sets are found or downloaded (default: per-user cache)")
    image_size: int | None = _knob(
        None,
        "resize images to this square size (default: the data's own size, capped at 128, or at 64 by the "
        "automatic recipe on a CPU)",
    )
    resize: str = _knob(
        "squash",
        "how a non-square image is made square: squash (stretched: every pixel stays in view), crop (its centre "
        "square) or pad (centred on black)",
    )
    val_fraction: float = _knob(0.1, "share of the training split held out, stratified, for validation")
    split: str | None = _knob(None, "merge all splits and re-split as TRAIN/VAL/TEST percentages, e.g. 80/10/10")
    skip_bad_images: bool = _knob(False, "skip (and list) image files that cannot be decoded instead of stopping")
    memory_budget: float | None = _knob(
        None, "GiB of decoded images held in memory, past which they stay on disk (default: a quarter of the RAM)"
    )
    translate: int | None = _knob(None, "random-crop padding in pixels (default: a tenth of the image size; 0: none)")
    flip: bool | None = _knob(None, "random horizontal flips (default: off for digits and MNIST, on otherwise)")
    rotate: float | None = _knob(None, "random rotation of each training image by up to this many degrees")
    scale: float | None = _knob(None, "random zoom of each training image in or out by up to this fraction, e.g. 0.1")
    jitter: float | None = _knob(None, "random brightness, contrast and saturation change, up to this fraction")
    erase: float | None = _knob(None, "chance that a random rectangle of each training image is blanked out")
    # model
    model: str = _knob(AUTO, "model name (see `cnnkit models`); auto: a whole recipe chosen from the data")
    dropout: float | None = _knob(None, "dropout probability, for models that have dropout")
    init_from: str | None = _knob(
        None,
        "start from the weights of a finished RUN folder (fine-tuning); a classifier "
        "head for another class count is made anew",
    )
    pretrained: bool = _knob(
        False, "start the backbone from torchvision's ImageNet weights, downloaded once (models resnet18 and up)"
    )
    pretrained_weights: str | None = _knob(
        None, "start the backbone from this weights FILE (safetensors or a PyTorch state_dict), read offline"
    )
    freeze_epochs: int = _knob(
        0, "train the classifier head alone for this many epochs first (with pretrained weights)"
    )
    whiten: bool = _knob(
        False, "start the first conv as a fixed whitening of the training images' patches (model fastcnn)"
    )
    # optimisation
    epochs: int | None = _knob(None, "passes over the training split (default: 15 for a named model)")
    steps: int | None = _knob(None, "optimiser steps in all, instead of --epochs (the last pass may be partial)")
    budget: float | None = _knob(
        None,
        "seconds for the whole run: the steps are planned from a measured warm-up to end training and testing in time",
    )
    batch_size: int = _knob(32, "images per training step")
    optimizer: str = _knob(
        "adamw",
        "one of " + ", ".join(OPTIMIZERS) + " (muon: Muon for the hidden conv and linear "
        "weights, sgd for biases, norms and the classifier head)",
    )
    lr: float = _knob(3e-3, "peak learning rate")
    head_lr: float | None = _knob(
        None,
        "peak learning rate of the classifier head (default: --lr; over pretrained weights, --lr is the head's rate "
        "and the backbone's is a tenth of it)",
    )
    momentum: float = _knob(0.9, "momentum for sgd, rmsprop and muon's sgd part")
    nesterov: bool = _knob(False, "Nesterov momentum for sgd and muon")
    muon_lr: float = _knob(0.24, "with --optimizer muon: peak learning rate of the Muon-trained weights")
    muon_momentum: float = _knob(0.6, "with --optimizer muon: momentum of the Muon-trained weights")
    weight_decay: float = _knob(
        0.01,
        "weight decay on conv and linear weights, not on biases or norms (muon: the "
        "share of each bias, norm and head weight decayed per step at the peak rate)",
    )
    schedule: str = _knob("onecycle", "learning-rate schedule: one of " + ", ".join(SCHEDULES))
    warmup: float | None = _knob(None, "share of steps spent warming up linearly (default: 0.25 for onecycle, else 0)")
    label_smoothing: float = _knob(0.0, "label smoothing for the cross-entropy loss")
    ema: float = _knob(
        0.0, "evaluate and keep a moving average of the weights with this decay per step, e.g. 0.999 (0: off)"
    )
    tta: bool = _knob(
        False,
        "test-time augmentation: average the predictions over each image, its mirror image "
        "and copies shifted by a pixel (6 views), in the test (validation sees the plain model)",
    )
    # machine
    device: str = _knob("auto", "one of " + ", ".join(DEVICES) + " (auto: cuda, then mps, then cpu)")
    precision: str = _knob(
        "auto", "one of " + ", ".join(PRECISIONS) + " (auto: bf16 autocast where the GPU or CPU computes bf16 natively)"
    )
    compile: bool = _knob(False, "compile the model with torch.compile (pays off on long GPU runs)")
    skip_nonfinite: bool = _knob(
        False,
        "skip a step whose loss is NaN or infinite and halve the learning rate, "
        "instead of stopping (checks every step: a little slower on a GPU)",
    )
    checkpoint_every: int = _knob(0, "also checkpoint every N training steps, not only at each epoch's end (0: off)")
    seed: int = _knob(0, "seed for splits, initialisation, shuffling and augmentation")
    out: str | None = _knob(None, "run folder (default: runs/<data>-<model>-<time>)")

    def __post_init__(self) -> None:
        """Settings built in Python are checked like those from a flag or a file: coerced, then validated."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Check every value before any work starts; the message names the flag and what to do."""
        _require(self.epochs is None or self.epochs >= 1, "epochs", self.epochs, "must be at least 1")
        _require(self.steps is None or self.steps >= 1, "steps", self.steps, "must be at least 1")
        _require(self.epochs is None or self.steps is None, "epochs", self.epochs, "and --steps: give one of the two")
        _require(
            self.budget is None or (self.epochs is None and self.steps is None),
            "budget",
            self.budget,
            "plans the steps itself: leave out --epochs and --steps",
        )
        _require(self.budget is None or self.budget > 0, "budget", self.budget, "must be a positive number of seconds")
        _require(self.rotate is None or 0 <= self.rotate <= 180, "rotate", self.rotate, "must be 0 to 180 degrees")
        _require(self.scale is None or 0 <= self.scale < 1, "scale", self.scale, "must be in [0, 1), e.g. 0.1")
        _require(self.jitter is None or 0 <= self.jitter < 1, "jitter", self.jitter, "must be in [0, 1), e.g. 0.2")
        _require(self.erase is None or 0 <= self.erase <= 1, "erase", self.erase, "must be in [0, 1], e.g. 0.25")
        _require(self.freeze_epochs >= 0, "freeze_epochs", self.freeze_epochs, "must be 0 or more")
        starts = [k.replace("_", "-") for k in ("pretrained", "pretrained_weights", "init_from") if getattr(self, k)]
        if len(starts) > 1:
            raise CnnkitError(f"--{' and --'.join(starts)} are ways to start: give one of them")
        _require(
            self.freeze_epochs == 0 or bool(starts),
            "freeze_epochs",
            self.freeze_epochs,
            "keeps pretrained weights fixed while the head learns: add --pretrained, --pretrained-weights "
            "or --init-from",
        )
        _require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be 0 or more")
        _require(0 <= self.seed < 2**63, "seed", self.seed, "must be a whole number from 0 to 2^63 - 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        _require(self.lr > 0, "lr", self.lr, "must be a positive number, e.g. 0.001")
        _require(self.head_lr is None or self.head_lr > 0, "head_lr", self.head_lr, "must be a positive number")
        _require(self.muon_lr > 0, "muon_lr", self.muon_lr, "must be a positive number, e.g. 0.2")
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        _require(0 <= self.muon_momentum < 1, "muon_momentum", self.muon_momentum, "must be in [0, 1)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be 0 or more")
        _require(0 <= self.ema < 1, "ema", self.ema, "must be in [0, 1), e.g. 0.999")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "must be in [0, 1)")
        _require(0 <= self.val_fraction < 1, "val_fraction", self.val_fraction, "must be in [0, 1)")
        _require(self.warmup is None or 0 <= self.warmup < 1, "warmup", self.warmup, "must be in [0, 1)")
        _require(self.dropout is None or 0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _require(
            self.image_size is None or 4 <= self.image_size <= 1024,
            "image_size",
            self.image_size,
            "must be between 4 and 1024 pixels",
        )
        _require(self.translate is None or self.translate >= 0, "translate", self.translate, "must be 0 or more")
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, "must be one of " + ", ".join(OPTIMIZERS))
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, "must be one of " + ", ".join(SCHEDULES))
        _require(not self.memory_budget or self.memory_budget > 0, "memory_budget", self.memory_budget, "must be > 0")
        _require(self.resize in RESIZE_RULES, "resize", self.resize, "must be one of " + ", ".join(RESIZE_RULES))
        _require(self.device in DEVICES, "device", self.device, "must be one of " + ", ".join(DEVICES))
        _require(self.precision in PRECISIONS, "precision", self.precision, "must be one of " + ", ".join(PRECISIONS))
        check_model_name(self.model)
        preset_settings(self.preset)  # an unknown preset is named with the valid ones
        if self.split is not None:
            parse_split(self.split)

    @property
    def starts_pretrained(self) -> bool:
        return self.pretrained or self.pretrained_weights is not None

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Settings over the named preset's values over the defaults."""
        preset = preset_settings(coerce("preset", values.get("preset")))
        if {"epochs", "budget"} & set(values):  # the user's own length wins over the preset's steps
            preset.pop("steps", None)
        values = {**preset, **values}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CnnkitError(
                f"unknown setting(s) {', '.join(unknown)}; valid settings are: {', '.join(sorted(known))}"
            )
        return cls(**values)


@functools.cache
def field_type(key: str) -> type:
    """The plain type of a setting: int, float, bool or str (Optional stripped)."""
    hint = typing.get_type_hints(TrainConfig)[key]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def coerce(key: str, value):
    """Turn a value from YAML, the command line or Python into the setting's type, or say which key is wrong."""
    return to_type(key, value, field_type(key), _optional(key))


@functools.cache
def _optional(key: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[key])


def _require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise CnnkitError(f"--{key.replace('_', '-')} {value} {rule}")
