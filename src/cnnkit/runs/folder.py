"""The run folder on disk: config.yaml, model.json, metrics.csv, rates.csv, weights.safetensors, summary.json
and checkpoint.safetensors (and plan.json, lr_find.json, report.html and plots/ when asked for). Only the main
process of a run writes to it (`RunFolder`); every other process knows the same path and writes nothing. What is
in the files is read through `cnnkit.runs.records`."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write, read_json, write_json, writing
from cnnkit.core.machine import Machine
from cnnkit.models.weights import save_weights
from cnnkit.training.checkpoint import CHECKPOINT, save_checkpoint

if TYPE_CHECKING:
    from cnnkit.settings.config import TrainConfig

try:
    import fcntl  # POSIX: a lock that goes with its process, however the process ends
except ImportError:  # Windows: runs are then only refused when their folder already holds files
    fcntl = None  # type: ignore[assignment]

CONFIG, MODEL_INFO, METRICS, WEIGHTS, SUMMARY, LR_FIND = (
    "config.yaml",
    "model.json",
    "metrics.csv",
    "weights.safetensors",
    "summary.json",
    "lr_find.json",  # with --lr auto: the range test's curve
)
PLAN = "plan.json"  # with --lr auto or --budget: what the run decided as it went
RACE = "race.json"  # the automatic recipe's race: every candidate's settings and validation scores
ONNX = "model.onnx"  # `cnnkit export`'s ONNX file; the model itself in an int8 run from `cnnkit compress`
WEIGHTS_SHA256 = "cnnkit_weights_sha256"  # what an export records: the hash of the weights it was made from
TENSORBOARD = "tensorboard"  # with --tensorboard: the event files
METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
RATES, RATE_FIELDS = "rates.csv", ("epoch", "step", "lr")  # every step's rate, as the run took it


class RunFolder:
    """A run's folder, and every write to it: the one place that decides who writes. The main process holds
    an exclusive lock on the folder while the run lives, so a second run on the same folder is refused."""

    def __init__(self, path: Path, writer: bool = True, lock: int | None = None, created: bool = False):
        self.path, self.writer, self.lock, self.created = path, writer, lock, created

    @classmethod
    def create(cls, out: str | None, name: str, machine: Machine) -> RunFolder:
        """The main process makes and claims the folder (`out`, or runs/NAME-TIME); the others learn its path."""
        if not machine.is_main:
            return cls(Path(machine.share("")), writer=False)
        path, created = new_run_dir(out, name)
        lock = claim(path)
        if not created and any(path.iterdir()):  # checked under the lock: no other run can be filling it
            release(lock)
            raise CnnkitError(f"--out {path} already holds files; choose a new folder or delete that one")
        machine.share(str(path.resolve()))  # absolute: the same folder from any working directory
        return cls(path, True, lock, created)

    @classmethod
    def reopen(cls, path: Path, machine: Machine) -> RunFolder:
        """An existing run's folder, claimed again by the main process (to resume it)."""
        return cls(path, True, claim(path)) if machine.is_main else cls(path, writer=False)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        release(self.lock)
        self.lock = None

    def abandon(self) -> None:
        """A run that never started leaves nothing behind: its first files go, and so does the folder if the
        run made it; a folder the user made (or a mount point) stays, empty and ready for the next run."""
        if not self.writer:
            return
        for name in (CONFIG, MODEL_INFO):
            (self.path / name).unlink(missing_ok=True)
        if self.created and not any(self.path.iterdir()):
            try:
                self.path.rmdir()
            except OSError:
                pass  # the error that stopped the run matters more than the leftover folder

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            atomic_write(self.path / name, lambda tmp: tmp.write_text(text))

    def write_config(self, cfg: TrainConfig) -> None:
        """The run's settings as config.yaml, without its folder: a repeat writes to a new one."""
        self.write_text(CONFIG, dataclasses.replace(cfg, out=None).to_yaml())

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
        """metrics.csv and rates.csv anew, keeping the rows of epochs before `keep_before_epoch` (a resumed run
        redoes the rest)."""
        if self.writer:
            for name, fields in ((METRICS, METRIC_FIELDS), (RATES, RATE_FIELDS)):
                self._restart_csv(name, fields, keep_before_epoch)

    def _restart_csv(self, name: str, fields: tuple[str, ...], keep_before_epoch: int) -> None:
        path, kept = self.path / name, []
        if keep_before_epoch > 1 and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["epoch"]) < keep_before_epoch]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fields)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(path, write)  # a resume that fails here keeps every row it had

    def append_metrics(self, row: dict) -> None:
        """One epoch's row, and its steps' rates, flushed as they go, so a crash keeps every finished epoch."""
        if self.writer:
            with writing(self.path / METRICS), open(self.path / METRICS, "a", newline="") as f:
                csv.writer(f).writerow(["" if row[k] is None else row[k] for k in METRIC_FIELDS])
            with writing(self.path / RATES), open(self.path / RATES, "a", newline="") as f:
                csv.writer(f).writerows([row["epoch"], int(step), rate] for step, rate in row["rates"])

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


def new_run_dir(out: str | None, name: str) -> tuple[Path, bool]:
    """The run folder, and whether this call created it (a folder the user made is never removed)."""
    base = Path(out).expanduser() if out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    try:
        while True:
            try:
                path.mkdir(parents=True)  # made here and now, so two runs never take the same new name
                created = True
                break
            except FileExistsError:
                if out:
                    created = False
                    break
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        with tempfile.TemporaryFile(dir=path):  # writable? (a unique name: two runs may probe at once)
            pass
    except OSError as e:
        raise CnnkitError(
            f"cannot write the run folder {path} ({e.strerror}); pass --out to a writable folder"
        ) from None
    return path, created


def claim(path: Path, busy: str | None = None) -> int | None:
    """Lock the folder for this run's life: another run on it is refused at once (with the message `busy`, if
    given), and the lock is let go when the process ends, even by SIGKILL, so a killed run can always be resumed.
    The lock is the open file's, not the process's: a second claim in the same process is refused too."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        in_use = f"{path} is in use by another cnnkit run that is still going"
        raise CnnkitError(busy or f"{in_use}; wait for it to end, or choose another --out") from None
    return fd


def release(lock: int | None) -> None:
    if lock is not None:
        os.close(lock)  # closing the descriptor lets go of the lock


@contextmanager
def finished_run(path: Path, work: str) -> Iterator[None]:
    """Hold a finished run's lock while `work` (e.g. "export it") reads its weights: refused while the run is
    still training, and no resume of it can start until the work is done."""
    lock = claim(path, f"{path} is still training (another process holds its lock): {work} when the run has finished")
    try:
        yield
    finally:
        release(lock)


def weights_sha256(run_dir: Path) -> str:
    """The sha256 (hex) of the run's weights file as it is now: an export records it, so that one made from
    other weights (the run trained or resumed since) is known to be stale."""
    digest = hashlib.sha256()
    with open(run_dir / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
