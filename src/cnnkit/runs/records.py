"""The records a run folder keeps, typed: the bookkeeping a run carries in every checkpoint as it trains
(`RunRecord`), and a finished run's files, read in this one place (`RunFiles`)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json, read_yaml
from cnnkit.runs.folder import CONFIG, LR_FIND, METRICS, RATES, SUMMARY

if TYPE_CHECKING:
    from cnnkit.settings.config import TrainConfig


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
    --lr auto's range test (None without it)."""

    path: Path
    settings: dict
    summary: dict
    metrics: list[dict]
    rates: list[dict]  # epoch, step, lr
    lr_find: dict | None

    @classmethod
    def read(cls, path: Path) -> RunFiles:
        if not (path / SUMMARY).is_file() or not (path / CONFIG).is_file():
            raise CnnkitError(
                f"{path} is not a finished cnnkit run folder (no {SUMMARY}); pass the folder `cnnkit train` wrote"
            )
        metrics, rates = (_rows(path / name) for name in (METRICS, RATES))
        lr_find = read_json(path / LR_FIND) if (path / LR_FIND).is_file() else None
        return cls(path, read_yaml(path / CONFIG), read_json(path / SUMMARY), metrics, rates, lr_find)

    @property
    def name(self) -> str:
        return self.path.name


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
