"""The run folder on disk: config.yaml, model.json, metrics.csv, weights.safetensors, summary.json.

Every file is written whole or not at all (temporary file, then rename), so a crash never leaves a
half-written file in place of a good one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import classifier_head, unwrap

CONFIG, MODEL_INFO, METRICS, WEIGHTS, SUMMARY = (
    "config.yaml", "model.json", "metrics.csv", "weights.safetensors", "summary.json")
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP; never part of saved names


def new_run_dir(out: str | None, data_name: str, model_name: str) -> Path:
    """Create the run folder; refuses one that already holds a run, so no finished work is overwritten."""
    if out:
        path = Path(out).expanduser()
        if path.is_dir() and any(path.iterdir()):
            raise CnnkitError(f"--out {path} already holds files; choose a new folder or delete that one")
    else:
        base = Path("runs") / f"{data_name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        raise CnnkitError(f"cannot write the run folder {path} ({e.strerror}); "
                          "pass --out to a writable folder") from None
    return path


def ensure_free_space(path: Path, needed: int) -> None:
    """Fail before training, not in the middle of it, when the run's files cannot fit on the disk."""
    margin = 16 * 2**20
    free = shutil.disk_usage(path).free
    if free < needed + margin:
        raise CnnkitError(f"only {free / 2**20:.1f} MiB are free where {path} is, and this run's weights and "
                          f"checkpoints need about {(needed + margin) / 2**20:.1f} MiB; free some space or pass "
                          "--out to another disk")


def remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def atomic_write(path: Path, write) -> None:
    """write(tmp_path), flush it to disk, then rename it over `path` in one step: a crash or a full disk at
    any moment leaves either the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CnnkitError(f"cannot write {path}: {e.strerror or e}; the previous version of the file is "
                              "intact. Free some disk space or choose another --out") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CnnkitError(f"cannot read {path} ({e}); is this a cnnkit run folder?") from None


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(model: nn.Module, path: Path, remake_head: bool = False) -> list[str]:
    """Load safetensors weights (never a pickle) into a plain model, whatever wrapper they were saved from.

    With `remake_head`, a final linear layer sized for another class count keeps its fresh initialisation;
    the names of such tensors are returned. Any other difference is refused, naming what differs.
    """
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CnnkitError(f"{path} is not a readable safetensors weights file ({e})") from None
    for prefix in WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = unwrap(model).state_dict()
    fresh = [k for k in (_head_names(model) if remake_head else []) if k in state
             and state[k].shape != expected[k].shape]
    state.update({k: expected[k] for k in fresh})
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: saved {tuple(state[k].shape)}, model has {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise CnnkitError(f"the weights in {path} do not fit this model: " + "; ".join(problems[:5])
                          + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    unwrap(model).load_state_dict(state)
    return fresh


def _head_names(model: nn.Module) -> list[str]:
    head = classifier_head(model)
    name = next((n for n, m in unwrap(model).named_modules() if m is head), None)
    return [f"{name}.weight", f"{name}.bias"] if head is not None else []


class MetricsLog:
    """metrics.csv, one row per epoch, flushed as it goes so a crash keeps every finished epoch."""

    FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")

    def __init__(self, path: Path, keep_before_epoch: int = 1):
        """A new log, keeping the rows of epochs before `keep_before_epoch` (a resumed run redoes the rest)."""
        kept = []
        if keep_before_epoch > 1 and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["epoch"]) < keep_before_epoch]
        self.path = path
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row[k] is None else row[k] for k in self.FIELDS])

