"""`cnnkit compare RUN RUN...`: the settings that differ between runs, their results side by side, and
their learning curves overlaid in one plot."""

from __future__ import annotations

import csv
from pathlib import Path

from cnnkit.errors import CnnkitError
from cnnkit.files import read_json, read_yaml
from cnnkit.plots import pyplot, save_figure
from cnnkit.progress import columns
from cnnkit.report import shown
from cnnkit.rundir import CONFIG, METRICS, SUMMARY

RESULTS = (
    ("test_accuracy", "test accuracy"),
    ("test_loss", "test loss"),
    ("val_accuracy", "best validation accuracy"),
    ("best_epoch", "best epoch"),
    ("train_seconds", "training seconds"),
    ("seconds_used", "seconds in all"),
    ("num_parameters", "parameters"),
)
NOT_SETTINGS = {"out"}  # where a run was written is not how it was trained


class Compared:
    """One finished run: its folder name, settings, summary and metrics rows."""

    def __init__(self, folder: Path):
        if not (folder / SUMMARY).is_file() or not (folder / CONFIG).is_file():
            raise CnnkitError(f"{folder} is not a finished cnnkit run folder (no {SUMMARY}); pass run folders")
        self.name = folder.name
        self.settings, self.summary = read_yaml(folder / CONFIG), read_json(folder / SUMMARY)
        with (folder / METRICS).open(newline="") as f:
            self.rows = list(csv.DictReader(f))


def compare_runs(folders: list[Path]) -> list[Compared]:
    if len(folders) < 2:
        raise CnnkitError("compare needs at least two run folders")
    return [Compared(folder) for folder in folders]


def comparison_table(runs: list[Compared]) -> str:
    """The settings whose values differ, then the results; one column per run."""
    keys = sorted({k for run in runs for k in run.settings} - NOT_SETTINGS)
    differing = [k for k in keys if len({repr(run.settings.get(k)) for run in runs}) > 1]
    rows = [("run", *(run.name for run in runs))]
    rows += [(k, *(shown(run.settings.get(k)) for run in runs)) for k in differing]
    rows += [(label, *(shown(run.summary.get(key)) for run in runs)) for key, label in RESULTS]
    lines = columns(rows)
    if not differing:
        lines.insert(1, "(the runs' settings are the same)")
    return "\n".join(lines)


def write_curves(runs: list[Compared], path: Path) -> Path:
    """Validation accuracy and training loss per epoch, one line per run, as a PNG at `path`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        epochs = [int(r["epoch"]) for r in run.rows]
        for ax, column in zip(axes, ("val_accuracy", "train_loss"), strict=True):
            points = [
                (e, float(r[column])) for e, r in zip(epochs, run.rows, strict=True) if r[column] not in ("", None)
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run.name)
    for ax, title in zip(axes, ("validation accuracy", "training loss"), strict=True):
        ax.set(xlabel="epoch", title=f"{title} per epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
