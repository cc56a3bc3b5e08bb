"""A run's figures, drawn off-screen by matplotlib (the `report` extra): learning curves, the learning-rate
schedule, the confusion matrix (counts, and normalised per true class), per-class accuracy, and, from the
test images themselves, a grid of them with their predicted labels and the most confidently wrong ones.
The first four are made from what the run folder holds (metrics.csv, rates.csv, summary.json), so any
finished run can be drawn again."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write
from cnnkit.core.progress import printable
from cnnkit.data.ondisk import loaded
from cnnkit.data.sets import ImageSet
from cnnkit.runs.records import RunFiles
from cnnkit.settings.config import TrainConfig

PLOTS = "plots"  # the run folder's sub-folder of PNG files
ANNOTATED_CLASSES = 20  # up to this many classes, each cell of the confusion matrix shows its number
GRID_IMAGES = 36  # test images drawn at random (the same each time), six by six, with their predicted labels
TOP_LOSSES = 16  # the most confidently wrong test images
DPI = 110
CONFUSION_FONT = 8  # points, the class names beside and below the confusion matrix
CONFUSION_NUMBERED_CELL = 0.45  # inches a cell, up to ANNOTATED_CLASSES: room for "0.00" at 8 points
CONFUSION_CELL = 0.24  # inches a cell beyond, 26 pixels at DPI: an 8-point name is 12 pixels high
CONFUSION_MIN_SIDE = 3.0  # inches: two classes still make a matrix to read
CONFUSION_MAX_NAME = 4.0  # inches: a longer class name is cut short (about 65 characters at 8 points)
CONFUSION_MAX_INCHES = 30.0  # the figure's longer side at most: 3,300 pixels at DPI (about 100 classes whole)
PER_CLASS_FONT = 10  # points, the class names beside the accuracy bars
PER_CLASS_MAX_NAME = 2.5  # inches of the 6-inch-wide figure: a longer class name is cut short
OPTIMIZER_NAMES = {"sgd": "SGD", "muon": "Muon", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
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


def schedule_figure(settings: dict, rates: list[dict], rows: list[dict]) -> Any:
    """The rate every step took (rates.csv), and the rate metrics.csv recorded for each epoch: its first step's.
    Both are the run's own records of one rate, its first parameter group's (the conv and linear weights: Muon's
    with muon), which the epoch line prints too; the label says whose it is, as other groups may take others."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([int(r["step"]) for r in rates], [float(r["lr"]) for r in rates], label="rates.csv: every step")
    first: dict[str, int] = {}
    for r in rates:
        first.setdefault(r["epoch"], int(r["step"]))
    starts = [(first[r["epoch"]], float(r["lr"])) for r in rows if r["epoch"] in first]
    if starts:
        ax.plot(*zip(*starts, strict=True), "o", markersize=3, label="metrics.csv: each epoch's first step")
    drawn, left_out = rate_shown(settings)
    ax.legend(title=left_out, title_fontsize=8, fontsize=8)
    ax.set(
        xlabel="step",
        ylabel=drawn,
        title=f"{settings.get('schedule')} schedule, {len(rates)} step{'s' * (len(rates) != 1)}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def rate_shown(settings: dict) -> tuple[str, str | None]:
    """Whose rate the plot draws (the first parameter group's), as an axis label, and the rate it leaves out:
    with muon, SGD trains biases and head at a rate of its own, so a bare "learning rate" would mislead."""
    optimizer = OPTIMIZER_NAMES.get(str(settings.get("optimizer")), str(settings.get("optimizer")))
    if optimizer == "Muon":
        return (
            "Muon's rate",
            f"of conv and linear weights; not drawn:\nSGD's of biases and head, peak {settings['lr']:g}",
        )
    if settings.get("head_lr") is not None:
        return f"{optimizer}'s rate", f"of all but the head; not drawn:\nthe head's, peak {settings['head_lr']:g}"
    return f"{optimizer}'s rate", None


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
    """Rows: the true class; columns: the predicted one. Normalised, each row sums to 1 (recall per class).
    The figure is sized from the cells out (see confusion_layout), so many classes or long names grow the
    picture instead of squeezing the matrix."""
    plt = pyplot()
    values = [[c / max(1, sum(row)) for c in row] if normalised else row for row in matrix]
    layout = confusion_layout(classes)
    fig = plt.figure(figsize=layout["figure"])
    ax = fig.add_axes(layout["matrix"])
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else None, aspect="auto")
    fig.colorbar(image, cax=fig.add_axes(layout["colorbar"]))
    ticks, names = range(len(classes)), layout["names"]
    ax.set_xticks(ticks, names, rotation=90, fontsize=layout["fontsize"])
    ax.set_yticks(ticks, names, fontsize=layout["fontsize"])
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (", normalised" if normalised else ""))
    if len(classes) <= ANNOTATED_CLASSES:
        top = max(max(row) for row in values) or 1
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                text = f"{v:.2f}" if normalised else str(v)
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    return fig


def confusion_layout(classes: list[str]) -> dict[str, Any]:
    """Where the confusion matrix's parts go, in inches turned into figure fractions: square cells big enough
    for their number (or, unnumbered, for a label's line height), the class names measured as drawn beside
    and below them, a colour bar on the right. Past CONFUSION_MAX_INCHES the cells shrink, and the names'
    font with them, so names never overlap."""
    n = len(classes)
    cell = CONFUSION_NUMBERED_CELL if n <= ANNOTATED_CLASSES else CONFUSION_CELL
    fontsize: float = CONFUSION_FONT
    names = [_shortened(c, fontsize, CONFUSION_MAX_NAME) for c in classes]
    label = max(_width_inches(name, fontsize) for name in names) + 0.55  # names, tick marks and the axis label
    right, top = 1.1, 0.45  # the colour bar with its numbers; the title
    side = max(CONFUSION_MIN_SIDE, n * cell)
    side = min(side, CONFUSION_MAX_INCHES - label - max(right, top))
    fontsize = min(fontsize, side / n * 72 / 1.4)  # a line of names a cell high, with room between them
    width, height = label + side + right, label + side + top
    return {
        "figure": (width, height),
        "matrix": (label / width, label / height, side / width, side / height),
        "colorbar": ((label + side + 0.15) / width, label / height, 0.2 / width, side / height),
        "names": names,
        "fontsize": fontsize,
    }


def _width_inches(text: str, fontsize: float) -> float:
    """How wide `text` is drawn in matplotlib's default font, in inches (no mathtext: names are plain text)."""
    from matplotlib.font_manager import FontProperties  # imported here, after pyplot() chose the backend
    from matplotlib.textpath import TextToPath

    width, _, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return width / 72


def _shortened(name: str, fontsize: float, inches: float) -> str:
    """`name`, cut short with an ellipsis if wider than `inches`: one absurdly long name must not take the
    picture's room (the report's table per class gives every name whole)."""
    while len(name) > 1 and _width_inches(name, fontsize) > inches:
        name = name[:-2] + "…"
    return name


def per_class_figure(per_class: dict[str, float | None]) -> Any:
    """Test accuracy of each class, worst at the top: where the model needs more or better images."""
    plt = pyplot()
    ranked = sorted(((a if a is not None else 0.0, c) for c, a in per_class.items()), reverse=True)
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(ranked) + 1)))
    ax.barh(range(len(ranked)), [a for a, _ in ranked], color="tab:blue")  # by place: two names may look alike
    names = [_shortened(c, PER_CLASS_FONT, PER_CLASS_MAX_NAME) for _, c in ranked]  # a long one leaves no room
    ax.set_yticks(range(len(ranked)), names, fontsize=PER_CLASS_FONT)
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
    # names drawn as a terminal shows them: a folder name's byte that is not UTF-8 is a TypeError to matplotlib
    classes, per_class = [printable(c) for c in classes], {printable(c): a for c, a in per_class.items()}
    figures = {
        "curves": curves_figure(rows),
        "learning_rate": schedule_figure(_typed(files.settings), files.rates, rows),
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


def _typed(settings: dict) -> dict:
    """config.yaml's settings as the run reads them: its text may hold `lr: 1e-3`, which YAML reads as a string
    (its floats need a dot), or leave a key out, which the run takes as the default."""
    return dataclasses.asdict(TrainConfig.from_dict(settings))


def save_figure(fig: Any, path: Path) -> Path:
    """`fig` as a PNG at `path` (whole or not at all), then closed."""
    atomic_write(path, partial(fig.savefig, dpi=DPI, format="png"))
    pyplot().close(fig)
    return path
