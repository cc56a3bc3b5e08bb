"""The records a run folder keeps, typed, each read and written here: model.json (`ModelInfo`, checked at
the edge: an edited or damaged file must not build a model or preprocess an image), summary.json
(`RunSummary`), plan.json (`RunPlan`), the bookkeeping a run carries in every checkpoint as it trains
(`RunRecord`), and a finished run's files (`RunFiles`)."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json, read_yaml
from cnnkit.data.images import RESIZE_RULES
from cnnkit.runs.folder import CONFIG, LR_FIND, METRICS, RACE, RATES, SUMMARY

if TYPE_CHECKING:
    from cnnkit.settings.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """model.json: what rebuilds the network and prepares an image for it, and what it learned from."""

    model: str
    model_options: dict
    in_channels: int
    image_size: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    resize: str = "squash"  # runs from before --resize squashed every image
    cnnkit_version: str | None = None
    num_parameters: int | None = None
    data: dict | None = None  # what pins the data down: each split's size and a hash (runs.schema)
    module: str | None = None  # the class name of an nn.Module passed in from Python
    quantized: dict | None = None  # an int8 run of `cnnkit compress`: the run it came from, its calibration

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        values = read_json(path)
        problem = model_info_problem(values)
        if problem:
            raise CnnkitError(
                f"{path} is not a valid cnnkit model.json ({problem}); it was edited or damaged: use "
                "the run folder as `cnnkit train` wrote it, or train again"
            )
        return cls.of(values)

    @classmethod
    def of(cls, values: dict) -> ModelInfo:
        """From a mapping `model_info_problem` passed; keys of a later cnnkit's are left out."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def label(self) -> str:
        """The model's name, or the class name of a module passed in from Python."""
        return self.module or self.model


def model_info_problem(info: object) -> str | None:
    """What is wrong with a model.json's content, or None."""
    if not isinstance(info, dict):
        return "it holds no mapping"
    kinds = {
        "model": str,
        "model_options": dict,
        "in_channels": int,
        "image_size": int,
        "classes": list,
        "mean": list,
        "std": list,
    }
    for key, kind in kinds.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            return f"{key!r} is missing or not a {kind.__name__}"
    channels, classes = info["in_channels"], info["classes"]
    if channels not in (1, 3):
        return f"in_channels is {channels}, not 1 or 3"
    if not 4 <= info["image_size"] <= 1024:
        return f"image_size is {info['image_size']}, not 4 to 1024"
    if len(classes) < 2 or len(set(map(str, classes))) != len(classes) or not all(isinstance(c, str) for c in classes):
        return "classes must be two or more different names"
    for key in ("mean", "std"):
        values = info[key]
        if len(values) != channels or not all(_plausible(v) for v in values):
            return f"{key} must hold {channels} number(s) from -10 to 10, one per channel (pixels are on a 0..1 scale)"
    if info.get("resize", "squash") not in RESIZE_RULES:
        return f"resize is {info['resize']!r}, not one of {', '.join(RESIZE_RULES)}"
    if min(info["std"]) < 1e-6:
        return "std must be positive: a zero std divides every pixel by zero"
    return None


def _plausible(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) <= 10


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """summary.json: the test results, how training went, the data and model, and where the figures came from.
    Every field may be None: in a run trained with --no-test (the test's), and in runs older than the field."""

    # the test (`training.evaluation.test_metrics`; `cnnkit eval` recomputes these)
    test_accuracy: float | None = None
    test_balanced_accuracy: float | None = None  # each class's recall, averaged: what imbalance cannot hide
    test_macro_f1: float | None = None
    test_loss: float | None = None
    per_class_accuracy: dict[str, float | None] | None = None
    per_class: dict[str, dict] | None = None  # each class's precision, recall, f1 and test images
    confusion_matrix: list[list[int]] | None = None  # rows: the true class, columns: the predicted one
    classes: list[str] | None = None
    num_test_images: int | None = None
    # how training went
    epochs: int | None = None
    steps: int | None = None
    budget_seconds: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)  # what went badly, with what to try
    best_epoch: int | None = None
    val_accuracy: float | None = None
    train_seconds: float | None = None
    compile_seconds: float | None = None
    test_seconds: float | None = None
    # the data and the model
    num_parameters: int | None = None
    num_train_images: int | None = None
    num_val_images: int | None = None
    data: str | None = None
    model: str | None = None
    module: str | None = None  # the class name of an nn.Module passed in from Python
    skipped_images: list[str] = dataclasses.field(default_factory=list)  # --skip-bad-images's
    # where the figures came from (`session.results.provenance`)
    cnnkit_version: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    device: str | None = None
    device_name: str | None = None
    bf16: bool | None = None
    git_commit: str | None = None
    seconds_used: float | None = None  # of the call that wrote it: a resumed run counts anew
    compressed: dict | None = None  # `cnnkit compress`'s record: the method, and each version's size and accuracy

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        values = read_json(path)
        if not isinstance(values, dict) or not isinstance(values.get("warnings", []), list):
            raise CnnkitError(
                f"{path} is not a summary.json as cnnkit writes it; it was edited or damaged: train again, "
                "or `cnnkit eval` the run for its test results"
            )
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        if self.compressed is None:  # only a compressed run has the section
            del values["compressed"]
        return values

    def with_test(self, metrics: dict) -> RunSummary:
        """This summary with the test section of `metrics` (`test_metrics`'s) in place."""
        return dataclasses.replace(self, **metrics)


@dataclasses.dataclass
class RunPlan:
    """What a run decided as it went, beside its settings: --lr auto's rate, --budget's steps, and the later
    plans' warm-up share, bends and the step the whitening's bias stopped at. plan.json holds it as it changes,
    and config.yaml the settings with it applied, so a repeat or a resume takes it as it is."""

    lr: float | None = None
    head_lr: float | None = None  # over pretrained weights, the range test's rate is the new head's
    steps: int | None = None
    warmup: float | None = None
    bends: str | None = None  # as config.yaml holds them: "STEP:END,..."
    early_steps: int | None = None

    def applied_to(self, cfg: TrainConfig) -> TrainConfig:
        """The settings the run trains with: its own, with what it decided in place."""
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.steps is not None:  # planned: a repeat takes the steps, not the budget
            changes["budget"] = None
        return dataclasses.replace(cfg, **changes) if changes else cfg


@dataclasses.dataclass
class RunRecord:
    """How a run's training has gone so far, kept in every checkpoint (a resumed run goes on from it)."""

    best_score: float = -1.0  # the best validation accuracy (the last epoch's number without validation)
    best_epoch: int = 0
    train_seconds: float = 0.0
    train_accuracy: float = 0.0  # of the last epoch
    budget_seconds: float | None = None  # --budget, as planned
    budget_warning: str | None = None  # the budget was too short for one step and the test

    @classmethod
    def from_checkpoint(cls, values: object) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or not set(values) <= known:
            raise CnnkitError("the checkpoint's record of the run is not as cnnkit writes it: it was edited or damaged")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A finished run folder's records, read in this one place: the settings as config.yaml holds them,
    summary.json, metrics.csv's rows, every step's rate from rates.csv (none in a run older than it), and
    --lr auto's range test and the recipe's race (None without them)."""

    path: Path
    settings: dict
    summary: RunSummary
    metrics: list[dict]
    rates: list[dict]  # epoch, step, lr
    lr_find: dict | None
    race: dict | None  # the automatic recipe's race (None when it did not race)

    @classmethod
    def read(cls, path: Path) -> RunFiles:
        if not (path / SUMMARY).is_file() or not (path / CONFIG).is_file():
            raise CnnkitError(
                f"{path} is not a finished cnnkit run folder (no {SUMMARY}); pass the folder `cnnkit train` wrote"
            )
        metrics, rates = (csv_rows(path / name) for name in (METRICS, RATES))
        lr_find, race = (read_json(path / name) if (path / name).is_file() else None for name in (LR_FIND, RACE))
        return cls(path, read_yaml(path / CONFIG), RunSummary.read(path / SUMMARY), metrics, rates, lr_find, race)

    @property
    def name(self) -> str:
        return self.path.name


def csv_rows(path: Path) -> list[dict]:
    """A CSV file's rows as dicts of strings (none when it is not there)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
