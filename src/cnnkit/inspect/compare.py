"""`cnnkit compare RUN RUN...`: the settings that differ between runs, their results side by side, and
their learning curves overlaid in one plot."""

from __future__ import annotations

from pathlib import Path

from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import columns
from cnnkit.inspect.plots import pyplot, save_figure
from cnnkit.inspect.report import shown
from cnnkit.runs.records import RunFiles

RESULTS = (
    ("test_accuracy", "test accuracy"),
    ("test_balanced_accuracy", "balanced accuracy"),
    ("test_macro_f1", "macro-F1"),
    ("test_loss", "test loss"),
    ("val_accuracy", "best validation accuracy"),
    ("best_epoch", "best epoch"),
    ("train_seconds", "training seconds"),
    ("seconds_used", "seconds in all"),
    ("num_parameters", "parameters"),
)
NOT_SETTINGS = {"out"}  # where a run was written is not how it was trained


def compare_runs(folders: list[Path]) -> list[RunFiles]:
    if len(folders) < 2:
        raise CnnkitError("compare needs at least two run folders")
    return [RunFiles.read(folder) for folder in folders]


def comparison_table(runs: list[RunFiles]) -> list[str]:
    """The settings whose values differ, then the results; one column per run."""
    keys = sorted({k for run in runs for k in run.settings} - NOT_SETTINGS)
    differing = [k for k in keys if len({repr(run.settings.get(k)) for run in runs}) > 1]
    rows = [("run", *(run.name for run in runs))]
    rows += [(k, *(shown(run.settings.get(k)) for run in runs)) for k in differing]
    rows += [(label, *(shown(getattr(run.summary, key)) for run in runs)) for key, label in RESULTS]
    lines = columns(rows)
    if not differing:
        lines.insert(1, "(the runs' settings are the same)")
    return lines


def write_curves(runs: list[RunFiles], path: Path) -> Path:
    """Validation accuracy and training loss per epoch, one line per run, as a PNG at `path`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        epochs = [int(r["epoch"]) for r in run.metrics]
        for ax, column in zip(axes, ("val_accuracy", "train_loss"), strict=True):
            points = [
                (e, float(r[column])) for e, r in zip(epochs, run.metrics, strict=True) if r[column] not in ("", None)
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=run.name)
    for ax, title in zip(axes, ("validation accuracy", "training loss"), strict=True):
        ax.set(xlabel="epoch", title=f"{title} per epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
