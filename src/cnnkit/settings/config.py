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

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_yaml
from cnnkit.data import Reading
from cnnkit.models import AUTO
from cnnkit.settings.presets import preset_settings
from cnnkit.settings.rules import DEVICES, PRECISIONS, check_settings
from cnnkit.settings.values import to_type
from cnnkit.training.optimizers import OPTIMIZERS
from cnnkit.training.schedule import SCHEDULES


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
        "resize images to this square size (default: the data's own size, capped at 128)",
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
    turns: bool = _knob(
        False, "random right-angle turns of each training image: for views with no up (micrographs, satellite tiles)"
    )
    scale: float | None = _knob(None, "random zoom of each training image in or out by up to this fraction, e.g. 0.1")
    jitter: float | None = _knob(None, "random brightness, contrast and saturation change, up to this fraction")
    erase: float | None = _knob(None, "chance that a random rectangle of each training image is blanked out")
    # model
    model: str = _knob(AUTO, "model name (see `cnnkit models`); auto: a whole recipe chosen from the data")
    dropout: float | None = _knob(None, "dropout probability, for models that have dropout")
    activation: str | None = _knob(
        None, "the fastcnn models' activation: gelu (airbench's, their default) or silu (as accurate, quicker on a CPU)"
    )
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
    early_steps: int | None = _knob(
        None, "with --whiten: the steps over which the whitening's bias learns (default: the first 30%)"
    )
    prune: float = _knob(
        0.0,
        "share of the conv and linear weights set to zero, the smallest first, and kept at zero while training "
        "(with --init-from: a pruned fine-tune, as `cnnkit compress --prune` makes)",
    )
    # optimisation
    epochs: int | None = _knob(None, "passes over the training split (default: 15)")
    steps: int | None = _knob(None, "optimiser steps in all, instead of --epochs (the last pass may be partial)")
    budget: float | None = _knob(
        None,
        "seconds for the whole run: the steps are planned from a measured warm-up to end training and testing in "
        "time, and planned again as the run goes",
    )
    batch_size: int = _knob(32, "images per training step")
    optimizer: str = _knob(
        "adamw",
        "one of " + ", ".join(OPTIMIZERS) + " (muon: Muon for the hidden conv and linear "
        "weights, sgd for biases, norms and the classifier head)",
    )
    lr: float | str = _knob(
        3e-3, "peak learning rate, or auto: a tenth of the rate where a range test's loss was lowest (`cnnkit lr-find`)"
    )
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
    bends: str | None = _knob(
        None,
        "STEP:END points where --budget's later plans bent the onecycle decay to end on time, each with the end "
        "planned until then (written to config.yaml, so that a repeat takes the same rates)",
    )
    label_smoothing: float = _knob(0.0, "label smoothing for the cross-entropy loss")
    class_weights: str = _knob(
        "none",
        "none | balanced: weigh each class's loss by the inverse of its share of the training images, so the "
        "small classes count as much as the large ones",
    )
    sampler: str = _knob(
        "uniform",
        "uniform (each training image once a pass) | balanced (images drawn so that every class comes up as "
        "often, small classes' images repeated)",
    )
    race: bool = _knob(
        True,
        "with the automatic recipe: let the data decide the image size (by the detail it keeps), right-angle turns "
        "for grey images (by what a turn keeps) and, by short trials scored on held-out training images, flips for "
        "grey images and balanced sampling; "
        "--no-race keeps the recipe's rules of thumb",
    )
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
    sync_bn: bool = _knob(False, "with several GPU processes: batch norm statistics of the global batch, not a share")
    skip_nonfinite: bool = _knob(
        False,
        "skip a step whose loss is NaN or infinite and halve the learning rate, "
        "instead of stopping (checks every step: a little slower on a GPU)",
    )
    checkpoint_every: int = _knob(0, "also checkpoint every N training steps, not only at each epoch's end (0: off)")
    seed: int = _knob(0, "seed for splits, initialisation, shuffling and augmentation")
    out: str | None = _knob(None, "run folder (default: runs/<data>-<model>-<time>)")
    test: bool = _knob(True, "test the kept weights at the end (a sweep's trials leave the test to the winner)")
    report: bool = _knob(True, "draw the plots and write report.html at the end (needs the report extra)")
    tensorboard: bool = _knob(False, "log losses, accuracies and the rate to RUN/tensorboard (the tensorboard extra)")

    def __new__(cls, *args, **kwargs) -> TrainConfig:
        """A TrainConfig remembers which settings it was given: unset means unset, so the automatic recipe or
        a preset fills in the rest, as for the same keywords or flags (a value equal to the default is still
        the user's own: `TrainConfig(lr=3e-3)` trains as `cnnkit.train(lr=3e-3)` does)."""
        self = super().__new__(cls)
        named = dict(zip([f.name for f in dataclasses.fields(cls)], args, strict=False)) | kwargs
        self._remember_given(_set(named))
        return self

    def _remember_given(self, names: frozenset[str]) -> None:
        object.__setattr__(self, "_given", names)  # an attribute, not a field: config.yaml and == ignore it

    @property
    def given(self) -> dict:
        """The settings given when it was built, with their values now."""
        return {name: getattr(self, name) for name in getattr(self, "_given", ())}

    def __post_init__(self) -> None:
        """Settings built in Python are checked like those from a flag or a file: coerced, then validated."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Check every value before any work starts; the message names the flag and what to do."""
        check_settings(self)

    @property
    def starts_pretrained(self) -> bool:
        return self.pretrained or self.pretrained_weights is not None

    @property
    def peak_lr(self) -> float:
        """--lr as a number: `--lr auto` is replaced by the range test's rate before the optimiser is made."""
        if isinstance(self.lr, str):
            raise CnnkitError("--lr auto is found by a range test before training; this step needs a number")
        return self.lr

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Settings over the named preset's values over the defaults. An optional setting given as None (YAML's
        null) is left out, so the default or the recipe fills it in; a required one is refused."""
        preset = preset_settings(coerce("preset", values.get("preset")))
        if {"epochs", "budget"} & _set(values):  # the user's own length wins over the preset's steps
            preset.pop("steps", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CnnkitError(
                f"unknown setting(s) {', '.join(unknown)}; valid settings are: {', '.join(sorted(known))}"
            )
        cfg = cls(**{**preset, **{k: v for k, v in values.items() if v is not None or not _optional(k)}})
        cfg._remember_given(_set(values))  # the preset's values are its own, not the user's
        return cfg


def _set(values: dict) -> frozenset[str]:
    """The names of the settings given a value: None stands for "not set" (`epochs: null` means the default)."""
    return frozenset(name for name, value in values.items() if value is not None)


@functools.cache
def field_type(key: str) -> type:
    """The plain type of a setting: int, float, bool or str (Optional stripped)."""
    hint = typing.get_type_hints(TrainConfig)[key]
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def coerce(key: str, value):
    """Turn a value from YAML, the command line or Python into the setting's type, or say which key is wrong."""
    if key == "lr" and value == AUTO:  # the one setting that may be found by measuring
        return AUTO
    return to_type(key, value, field_type(key), _optional(key))


@functools.cache
def _optional(key: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[key])


def folder_reading(cfg: TrainConfig, resize: str) -> Reading:
    """How a run reads a folder's files: bad ones, the resize rule, and --memory-budget (GiB) in bytes."""
    return Reading(cfg.skip_bad_images, resize, int(cfg.memory_budget * 2**30) if cfg.memory_budget else None)
