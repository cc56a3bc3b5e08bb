"""What a run tells the user: the opening line, one line and one metrics.csv row per epoch, the closing
line, and summary.json with the test results and where they came from (versions, device, commit)."""

from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
from importlib.metadata import version
from pathlib import Path

import torch

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import Machine, device_name
from cnnkit.core.progress import say
from cnnkit.core.version import __version__
from cnnkit.models import num_parameters
from cnnkit.runs.folder import METRICS, TENSORBOARD, RunFolder
from cnnkit.runs.records import RunRecord, RunSummary, csv_rows
from cnnkit.session.context import RunContext
from cnnkit.training.events import Callback, EpochResult
from cnnkit.training.trainer import Trainer

SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout, when cnnkit runs from one: src/cnnkit/session/


class EpochReport(Callback):
    """Each epoch's numbers: a row of metrics.csv and a line on the console."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.folder.append_metrics(dataclasses.asdict(result))
        say(epoch_line(result, trainer.epochs))  # the trainer's: --budget's later plans may change them


class TensorBoardLog(Callback):
    """--tensorboard: each epoch's losses, accuracies and rate, through PyTorch's own SummaryWriter, in
    RUN/tensorboard (`tensorboard --logdir runs` shows every run side by side)."""

    def __init__(self, folder: RunFolder):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CnnkitError("--tensorboard needs TensorBoard: pip install 'cnnkit[tensorboard]'") from None
        self.writer = SummaryWriter(str(folder / TENSORBOARD))

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        step = trainer.scheduler.last_epoch  # optimiser steps so far: epochs of any length line up
        for name, value in dataclasses.asdict(result).items():
            if name not in ("epoch", "seconds", "rates") and value is not None:  # the scalars, as metrics.csv
                self.writer.add_scalar(name.replace("_", "/", 1) if name != "lr" else "lr", value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()


def epoch_line(r: EpochResult, epochs: int) -> str:
    val = f"  val loss {r.val_loss:.4f} acc {r.val_accuracy:.4f}" if r.val_loss is not None else ""
    return (
        f"epoch {r.epoch}/{epochs}  train loss {r.train_loss:.4f} acc {r.train_accuracy:.4f}{val}"
        f"  lr {r.lr:.2e}  {r.seconds:.1f}s"
    )


def opening_line(ctx: RunContext) -> str:
    data, machine = ctx.data, ctx.machine
    sizes = "/".join(str(len(data.splits[s])) for s in ("train", "val", "test"))
    return (
        f"cnnkit: {ctx.info.label} ({num_parameters(ctx.model):,} parameters) on {data.name}: {sizes} "
        f"train/val/test images of {data.channels}x{data.image_size}x{data.image_size}, {len(data.classes)} "
        f"classes; {machine.device}{' bf16' if machine.bf16 else ''}; run folder {ctx.folder}"
    )


NEAR_CHANCE = 0.01  # an accuracy this close to always answering the most common class means nothing was learned
MEMORISED_GAP = 0.3  # training accuracy this far above validation: memorised, not learned
# validation accuracy this much higher over the last quarter of the epochs than over the quarter before, with the best
# epoch among the last: the run was still learning (an inspection-like folder: 0.52 balanced at 30 passes, 0.92 at 260)
STILL_RISING = 0.01
SMALL_IMAGE = 64  # px: below this a larger --image-size may keep detail the run could not see
FEW_TO_LEARN = 100  # training images a class: below this, more images are the likeliest help


def closing_line(summary: RunSummary, folder: RunFolder) -> str:
    if summary.test_accuracy is None:
        val = summary.val_accuracy
        return f"validation accuracy {'none' if val is None else f'{val:.4f}'}, not tested; run saved in {folder}"
    return (
        f"test accuracy {summary.test_accuracy:.4f} (balanced {summary.test_balanced_accuracy:.4f}), "
        f"loss {summary.test_loss:.4f}; run saved in {folder}"
    )


def summary_json(
    ctx: RunContext, metrics: dict, record: RunRecord, compile_seconds: float, test_seconds: float
) -> RunSummary:
    """summary.json: the test metrics, how training went, the data, and where the figures came from."""
    data, settings = ctx.data, ctx.settings  # the steps as planned
    return RunSummary(
        **metrics,
        epochs=settings.epochs,
        steps=settings.steps,
        budget_seconds=record.budget_seconds,
        warnings=run_warnings(ctx, metrics, record),
        best_epoch=record.best_epoch,
        val_accuracy=record.best_score if len(data.splits["val"]) else None,
        train_seconds=round(record.train_seconds, 3),
        compile_seconds=round(compile_seconds, 3),
        test_seconds=round(test_seconds, 3),
        num_parameters=num_parameters(ctx.model),
        num_train_images=len(data.splits["train"]),
        num_val_images=len(data.splits["val"]),
        data=settings.data,
        model=settings.model,
        module=ctx.info.module,
        skipped_images=data.skipped,
        **provenance(ctx.machine),
    )


def run_warnings(ctx: RunContext, metrics: dict, record: RunRecord) -> list[str]:
    """What went badly, in plain words with what to try: a --budget too short for even one step, a model no
    better than always answering the most common class, or one that learned its training images by heart."""
    warnings = [record.budget_warning] if record.budget_warning is not None else []  # first: it may explain the rest
    splits = ctx.data.splits
    checks = [("test", metrics["test_accuracy"], splits["test"].labels)] if metrics["test_accuracy"] is not None else []
    if len(splits["val"]):
        checks.insert(0, ("validation", record.best_score, splits["val"].labels))
    learned_nothing = False
    for name, accuracy, labels in checks:
        common = torch.bincount(labels).max().item() / len(labels)
        if accuracy <= common + NEAR_CHANCE:
            warnings.append(
                f"{name} accuracy {accuracy:.3f} is no better than always answering the most common class "
                f"({common:.3f}): the model learned nothing useful. {_what_to_try(ctx)}"
            )
            learned_nothing = True
            break
    if not learned_nothing and metrics.get("test_balanced_accuracy") is not None:
        if ignored := _small_classes_ignored(metrics):
            warnings.append(ignored)
            learned_nothing = True
    if not learned_nothing and (rising := _still_learning(ctx, record)):
        warnings.append(rising)
    seen = record.train_accuracy
    if len(splits["val"]) and not learned_nothing and seen - record.best_score > MEMORISED_GAP:
        warnings.append(
            f"training accuracy {seen:.3f} but validation {record.best_score:.3f}: the model learned its "
            "training images by heart. Try stronger augmentation (--rotate, --scale, --jitter, --erase), fewer "
            "steps, more images, or --init-from a run trained on similar images"
        )
    return warnings


def _what_to_try(ctx: RunContext) -> str:
    """Advice for a run that learned nothing, from what this run was: the automatic recipe only to a run that
    chose its own model, a larger size only to small images, more images only to a small folder."""
    tries = ["the automatic recipe (no --model or --preset)"] if ctx.own_model else []
    if ctx.data.image_size < SMALL_IMAGE:
        tries.append(f"a larger --image-size (detail a pixel or two wide vanishes at {ctx.data.image_size} px)")
    tries.append("a lower --lr or more --steps")
    per_class = len(ctx.data.splits["train"]) / len(ctx.data.classes)
    if per_class < FEW_TO_LEARN:
        tries.append(f"more images (this run had {per_class:.0f} a class to learn from)")
    return f"Try {', '.join(tries)}, and check that each class folder holds its own pictures"


def _still_learning(ctx: RunContext, record: RunRecord) -> str | None:
    """Whether validation accuracy still climbed when training ended, said with the --budget to try: about twice
    this run's length (its budget, or its training seconds)."""
    rows = csv_rows(ctx.folder.path / METRICS)
    val = [float(row["val_accuracy"]) for row in rows if row.get("val_accuracy")]
    quarter = len(val) // 4
    if quarter < 2 or record.best_epoch <= len(val) - quarter:
        return None
    before, last = statistics.mean(val[-2 * quarter : -quarter]), statistics.mean(val[-quarter:])
    one_image = 1 / len(ctx.data.splits["val"])  # a small split's accuracy moves in steps this large
    if last - before <= max(STILL_RISING, 2 * one_image) or last >= 1 - one_image:  # noise, or nothing left to show
        return None
    longer = 10 * math.ceil(2 * (record.budget_seconds or record.train_seconds) / 10)
    return (
        f"validation accuracy was still rising when training ended ({before:.3f} then {last:.3f}, averaged over the "
        f"last two quarters of the epochs; the best at epoch {record.best_epoch} of {len(val)}): a longer run should "
        f"do better. Try --budget {longer}, about twice this run's length"
    )


def _small_classes_ignored(metrics: dict) -> str | None:
    """Plain accuracy can beat the largest class's share while the small classes are never answered: balanced
    accuracy (each class's recall, averaged) then sits at chance, 1 / classes, which is what one answer gets."""
    present = {c: s for c, s in metrics["per_class"].items() if s["images"]}
    chance = 1 / len(present)
    balanced = metrics["test_balanced_accuracy"]
    if len(present) < 2 or balanced > chance + NEAR_CHANCE:
        return None
    missed = [c for c, s in present.items() if not s["recall"]]
    named = f" (it recognised no test image of {', '.join(missed[:5])})" if missed else ""
    return (
        f"test balanced accuracy {balanced:.3f} is no better than answering one class for every image ({chance:.3f}):"
        f" the model ignores the smaller classes{named}. Try --class-weights balanced or --sampler balanced, or "
        "more images of the small classes"
    )


def provenance(machine: Machine) -> dict:
    """Where a run's figures came from: the software, the hardware, and the code's exact commit."""
    return {
        "cnnkit_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": version("torchvision"),  # its installed release, without importing it (seconds)
        "device": str(machine.device),
        "device_name": device_name(machine.device),
        "bf16": machine.bf16,
        "git_commit": git_commit(),
    }


def git_commit(root: Path = SOURCE_ROOT) -> str | None:
    """The checkout's commit, with '-dirty' for uncommitted changes; None for an installed package."""
    if not (root / ".git").exists() or not (root / "src" / "cnnkit").is_dir():
        return None
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()
