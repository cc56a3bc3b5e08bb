"""A run's figures, drawn off-screen by matplotlib (the `report` extra): learning curves, the learning-rate
schedule, the confusion matrix (counts, and normalised per true class), per-class accuracy, and, from the
test images themselves, a grid of them with their predicted labels and the most confidently wrong ones.
The first four are made from what the run folder holds (metrics.csv, rates.csv, summary.json), so any
finished run can be drawn again."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write
from cnnkit.data.ondisk import loaded
from cnnkit.data.sets import ImageSet
from cnnkit.runs.records import RunFiles

PLOTS = "plots"  # the run folder's sub-folder of PNG files
ANNOTATED_CLASSES = 20  # up to this many classes, each cell of the confusion matrix shows its number
GRID_IMAGES = 36  # test images drawn at random (the same each time), six by six, with their predicted labels
TOP_LOSSES = 16  # the most confidently wrong test images
DPI = 110
Predictions = tuple[ImageSet, torch.Tensor, torch.Tensor]  # the test images, their logits and their labels


def pyplot() -> Any:
    """matplotlib's pyplot on the off-screen Agg backend, or one line that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise CnnkitError("plots and reports need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # labels are class names, never mathtext: `cost $5 or $6` is text
    import matplotlib.pyplot as plt

    return plt


def curves_figure(rows: list[dict]) -> Any:
    """Loss and accuracy per epoch, training and validation side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [int(r["epoch"]) for r in rows]
    for ax, what in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            values = [float(r[f"{split}_{what}"]) if r[f"{split}_{what}"] not in ("", None) else None for r in rows]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, marker="o", markersize=3, label=split)
        ax.set(xlabel="epoch", ylabel=what, title=f"{what} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def schedule_figure(schedule: str, rates: list[dict], rows: list[dict]) -> Any:
    """The rate every step took (rates.csv), and the rate metrics.csv recorded for each epoch: its first step's.
    Both are the run's own records (of its first parameter group: the conv and linear weights, Muon's with
    muon); nothing is derived again from the settings."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot([int(r["step"]) for r in rates], [float(r["lr"]) for r in rates], label="rates.csv: every step")
    first: dict[str, int] = {}
    for r in rates:
        first.setdefault(r["epoch"], int(r["step"]))
    starts = [(first[r["epoch"]], float(r["lr"])) for r in rows if r["epoch"] in first]
    if starts:
        ax.plot(*zip(*starts, strict=True), "o", markersize=3, label="metrics.csv: each epoch's first step")
    ax.legend()
    ax.set(xlabel="step", ylabel="learning rate", title=f"{schedule} schedule, {len(rates)} steps")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def lr_find_figure(test: dict) -> Any:
    """A range test's loss against the rate (log scale), smoothed over the raw points, and the rate it
    suggested; the loss axis stops short of a diverged tail, so the falling stretch fills the plot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rates = test["rates"]
    losses, smoothed = ([math.nan if v is None else v for v in test[k]] for k in ("losses", "smoothed"))  # JSON null
    finite = [(r, loss) for r, loss in zip(rates, losses, strict=True) if math.isfinite(loss)]
    if finite:
        ax.plot(*zip(*finite, strict=True), ".", color="tab:gray", alpha=0.4, markersize=3, label="each step")
    ax.plot(rates, smoothed, label="smoothed")
    shown = [s for s in smoothed if math.isfinite(s)]
    if shown:
        lowest = min(shown + [loss for _, loss in finite])
        ax.set_ylim(0.9 * lowest, min(max(shown), 1.5 * shown[0]) * 1.05)
    if test["suggestion"] is not None:
        ax.axvline(test["suggestion"], color="tab:red", linestyle="--", label=f"suggested {test['suggestion']:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def confusion_figure(matrix: list[list[int]], classes: list[str], normalised: bool) -> Any:
    """Rows: the true class; columns: the predicted one. Normalised, each row sums to 1 (recall per class)."""
    plt = pyplot()
    values = [[c / max(1, sum(row)) for c in row] if normalised else row for row in matrix]
    side = min(12.0, 2.5 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else None)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (", normalised" if normalised else ""))
    if len(classes) <= ANNOTATED_CLASSES:
        top = max(max(row) for row in values) or 1
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                text = f"{v:.2f}" if normalised else str(v)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return fig


def per_class_figure(per_class: dict[str, float | None]) -> Any:
    """Test accuracy of each class, worst at the top: where the model needs more or better images."""
    plt = pyplot()
    ranked = sorted(((a if a is not None else 0.0, c) for c, a in per_class.items()), reverse=True)
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(ranked) + 1)))
    ax.barh([c for _, c in ranked], [a for a, _ in ranked], color="tab:blue")
    ax.set(xlim=(0, 1), xlabel="test accuracy", title="accuracy per class")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def grid_figure(images: torch.Tensor, labels: list[int], predicted: list[int], classes: list[str]) -> Any:
    """Test images with their predicted labels, as the tutorials end; a wrong one in red, framed, with its
    true label under the guess."""
    pairs = list(zip(labels, predicted, strict=True))
    captions = [classes[g] + (f"\n(true: {classes[t]})" if t != g else "") for t, g in pairs]
    return _mosaic(images, captions, [t != g for t, g in pairs], (1.8, 2.0))


def top_losses_figure(images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> Any:
    """Test images with their guess, its probability and the truth: given the most confidently wrong ones
    (`highest_losses`), often mislabelled images or classes that look alike."""
    p = logits.softmax(1)
    pairs = list(zip(p.argmax(1).tolist(), labels.tolist(), strict=True))
    captions = [f"{classes[g]} {p[i, g]:.2f}\ntrue: {classes[t]}" for i, (g, t) in enumerate(pairs)]
    return _mosaic(images, captions, [g != t for g, t in pairs], (2.2, 2.3))


def highest_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices of the TOP_LOSSES test images with the highest loss, highest first."""
    return nn.functional.cross_entropy(logits, labels, reduction="none").argsort(descending=True)[:TOP_LOSSES]


def _mosaic(images: torch.Tensor, captions: list[str], wrong: list[bool], cell: tuple[float, float]) -> Any:
    """uint8 (N, C, S, S) images in about square rows and columns of `cell` inches, each under its caption, a
    wrong one's caption red and the image framed in red. One picture with its captions, not an axis an image:
    a quarter of the drawing time (0.26 s against 1.07 s for 36 images)."""
    scale = math.ceil(64 / images.shape[-1])  # small images enlarged, pixels kept square, so margins are whole pixels
    images = images.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    n, channels, side = len(images), images.shape[1], images.shape[-1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    per_inch = side / (0.8 * cell[0])  # each image shown 0.8 of its cell wide, its caption above it
    width, height, margin = round(cell[0] * per_inch), round(cell[1] * per_inch), round(0.1 * per_inch)
    canvas = torch.full((rows * height, cols * width, channels), 255, dtype=torch.uint8)
    plt = pyplot()
    from matplotlib.patches import Rectangle  # matplotlib is an extra: imported once pyplot() found it

    fig = plt.figure(figsize=(cell[0] * cols, cell[1] * rows))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    for i, (image, caption, bad) in enumerate(zip(images, captions, wrong, strict=True)):
        top, left = (i // cols + 1) * height - side - margin, (i % cols) * width + (width - side) // 2
        canvas[top : top + side, left : left + side] = image.permute(1, 2, 0)
        colour = "red" if bad else "black"
        ax.text(left + side / 2, top - margin, caption, ha="center", va="bottom", fontsize=7, color=colour)
        if bad:
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="red", linewidth=2))
    pixels = canvas[..., 0] if channels == 1 else canvas
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.set(xlim=(-0.5, canvas.shape[1] - 0.5), ylim=(canvas.shape[0] - 0.5, -0.5))  # the canvas, whole, at once
    return fig


def write_plots(files: RunFiles, predictions: Predictions | None) -> dict[str, Path]:
    """Every figure of a finished run as a PNG in RUN/plots/; returns them by name. `predictions` (the test
    images, their logits and labels: `Run.test_predictions()`) add the image grid and the top losses."""
    rows, classes = files.metrics, files.summary.classes
    matrix, per_class = files.summary.confusion_matrix, files.summary.per_class_accuracy
    if classes is None or matrix is None or per_class is None:
        raise CnnkitError(f"{files.path} has no test results to draw: it was trained with --no-test")
    figures = {
        "curves": curves_figure(rows),
        "learning_rate": schedule_figure(str(files.settings.get("schedule")), files.rates, rows),
        "confusion": confusion_figure(matrix, classes, normalised=False),
        "confusion_normalised": confusion_figure(matrix, classes, normalised=True),
        "per_class_accuracy": per_class_figure(per_class),
    }
    if files.lr_find is not None:
        figures["lr_find"] = lr_find_figure(files.lr_find)
    if predictions is not None:
        test, logits, labels = predictions[0], predictions[1].cpu(), predictions[2].cpu()
        shown = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:GRID_IMAGES]  # all classes
        guesses = logits[shown].argmax(1).tolist()
        figures["test_images"] = grid_figure(
            loaded(test.subset(shown).images), labels[shown].tolist(), guesses, classes
        )
        worst = highest_losses(logits, labels)
        figures["top_losses"] = top_losses_figure(
            loaded(test.subset(worst).images), logits[worst], labels[worst], classes
        )
    folder = files.path / PLOTS
    folder.mkdir(exist_ok=True)
    return {name: save_figure(fig, folder / f"{name}.png") for name, fig in figures.items()}


def save_figure(fig: Any, path: Path) -> Path:
    """`fig` as a PNG at `path` (whole or not at all), then closed."""
    atomic_write(path, partial(fig.savefig, dpi=DPI, format="png"))
    pyplot().close(fig)
    return path
