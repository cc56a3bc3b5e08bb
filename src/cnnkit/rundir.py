"""The run folder on disk: config.yaml, model.json, metrics.csv, weights.safetensors, summary.json.

Every file is written whole or not at all (temporary file, then rename), so a crash never leaves a
half-written file in place of a good one.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import unwrap

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
        raise CnnkitError(f"cannot write the run folder {path} ({e.strerror}); pass --out to a writable folder") from None
    return path


def remove_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def atomic_write(path: Path, write) -> None:
    """write(tmp_path), flush to disk, then rename over `path` in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


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


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights (never a pickle) into a plain model, whatever wrapper they were saved from."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CnnkitError(f"{path} is not a readable safetensors weights file ({e})") from None
    for prefix in WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = unwrap(model).state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: saved {tuple(state[k].shape)}, model has {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise CnnkitError(f"the weights in {path} do not fit this model: " + "; ".join(problems[:5])
                          + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    unwrap(model).load_state_dict(state)


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

