"""The run folder on disk: config.yaml, model.json, metrics.csv, weights.safetensors, summary.json and
checkpoint.safetensors. Only the main process of a run writes to it; every other process knows the same
path and writes nothing."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cnnkit.checkpoint import CHECKPOINT, save_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.files import atomic_write, read_json, write_json
from cnnkit.machine import Machine
from cnnkit.models import unwrap

CONFIG, MODEL_INFO, METRICS, WEIGHTS, SUMMARY = (
    "config.yaml",
    "model.json",
    "metrics.csv",
    "weights.safetensors",
    "summary.json",
)
METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP; never part of saved names


class RunFolder:
    """A run's folder, and every write to it: the one place that decides who writes."""

    def __init__(self, path: Path, writer: bool = True):
        self.path, self.writer = path, writer

    @classmethod
    def create(cls, out: str | None, name: str, machine: Machine) -> RunFolder:
        """The main process makes the folder (`out`, or runs/NAME-TIME); the others learn its path."""
        path = new_run_dir(out, name) if machine.is_main else None
        shared = Path(machine.share(str(path.resolve()) if path else ""))  # absolute: the same from any cwd
        return cls(path or shared, machine.is_main)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            atomic_write(self.path / name, lambda tmp: tmp.write_text(text))

    def write_json(self, name: str, value: dict) -> None:
        if self.writer:
            write_json(self.path / name, value)

    def read_json(self, name: str) -> dict:
        return read_json(self.path / name)

    def save_weights(self, model: nn.Module) -> None:
        if self.writer:
            save_weights(model, self.path / WEIGHTS)

    def save_checkpoint(self, state: dict) -> None:
        if self.writer:
            save_checkpoint(self.path / CHECKPOINT, state)

    def start_metrics(self, keep_before_epoch: int = 1) -> None:
        """metrics.csv anew, keeping the rows of epochs before `keep_before_epoch` (a resumed run redoes the
        rest)."""
        if not self.writer:
            return
        path, kept = self.path / METRICS, []
        if keep_before_epoch > 1 and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["epoch"]) < keep_before_epoch]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append_metrics(self, row: dict) -> None:
        """One epoch's row, flushed as it goes, so a crash keeps every finished epoch."""
        if self.writer:
            with open(self.path / METRICS, "a", newline="") as f:
                csv.writer(f).writerow(["" if row[k] is None else row[k] for k in METRIC_FIELDS])

    def ensure_free_space(self, needed: int) -> None:
        """Fail before training, not in the middle of it, when the run's files cannot fit on the disk."""
        margin = 16 * 2**20
        free = shutil.disk_usage(self.path).free if self.writer else needed + margin
        if free < needed + margin:
            raise CnnkitError(
                f"only {free / 2**20:.1f} MiB are free where {self.path} is, and this run's weights "
                f"and checkpoints need about {(needed + margin) / 2**20:.1f} MiB; free some space or "
                "pass --out to another disk"
            )

    def remove_if_empty(self) -> None:
        """A run that never started leaves no empty folder behind."""
        if self.writer and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


def new_run_dir(out: str | None, name: str) -> Path:
    """Create the run folder; refuses one that already holds a run, so no finished work is overwritten."""
    if out:
        path = Path(out).expanduser()
        if path.is_dir() and any(path.iterdir()):
            raise CnnkitError(f"--out {path} already holds files; choose a new folder or delete that one")
    else:
        base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CnnkitError(
            f"cannot write the run folder {path} ({e.strerror}); pass --out to a writable folder"
        ) from None
    return path


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(model: nn.Module, path: Path, remake_head: str | None = None) -> list[str]:
    """Load safetensors weights (never a pickle) into a plain model, whatever wrapper they were saved from.

    With `remake_head` (the head module's name), a head sized for another class count keeps its fresh
    initialisation; the names of such tensors are returned. Any other difference is refused, naming it.
    """
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CnnkitError(f"{path} is not a readable safetensors weights file ({e})") from None
    for prefix in WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = unwrap(model).state_dict()
    head = f"{remake_head}." if remake_head else None
    fresh = [k for k in expected if head and k.startswith(head) and k in state and state[k].shape != expected[k].shape]
    state.update({k: expected[k] for k in fresh})
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: saved {tuple(state[k].shape)}, model has {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CnnkitError(
            f"the weights in {path} do not fit this model: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    unwrap(model).load_state_dict(state)
    return fresh
