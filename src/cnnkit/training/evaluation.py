"""Test-time numbers: loss, accuracy, balanced accuracy and macro-F1, each class's precision, recall and F1, and
the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import Machine
from cnnkit.data.sets import ImageSet
from cnnkit.models.inference import six_view_logits

EVAL_PIXELS = 1024 * 32 * 32  # pixels per evaluation batch: 1,024 CIFAR-sized images, fewer large ones (memory)


def eval_batch(image_size: int) -> int:
    """Images per evaluation batch: no gradients, so larger than training's, but bounded in pixels."""
    return max(8, EVAL_PIXELS // image_size**2)


def eval_batch_sizes(splits: dict[str, ImageSet]) -> set[int]:
    """Every batch size the validation and test passes will see: full batches and each split's remainder."""
    sizes = {len(splits[s]) for s in ("val", "test")} - {0}
    batch = eval_batch(splits["test"].images.shape[-1])
    return {size for n in sizes for size in (min(n, batch), n % batch)} - {0}


def own_share(split: ImageSet, machine: Machine) -> ImageSet:
    """This process's contiguous share of an evaluation split (all of it when there is one process); the
    shares' logits, gathered in rank order, are the whole split's."""
    if machine.world_size == 1 or len(split) == 0:  # no validation split (--val-fraction 0): nothing to share
        return split
    if len(split) < machine.world_size:
        raise CnnkitError(
            f"an evaluation split of {len(split)} images cannot give each of {machine.world_size} processes one; "
            "use fewer processes, or a larger --val-fraction or test split"
        )
    return split.subset(torch.arange(len(split))[machine.rows(len(split))])


@torch.no_grad()
def predict_logits(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], machine: Machine, tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32) and labels of an evaluation pass, still on the device.

    With `tta`, each image's logits are averaged over six views (`six_view_logits`).
    """
    model.eval()
    logits, labels = [], []
    for images, y in batches:
        with machine.autocast():
            logits.append(six_view_logits(model, images, machine.memory_format) if tta else model(images).float())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def test_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """The test section of summary.json, as `train` writes it and `eval` recomputes it."""
    n = len(classes)
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * n + predicted, minlength=n * n).view(n, n).cpu()  # rows: true, cols: predicted
    scores = class_scores(confusion, classes)
    present = [s for s in scores.values() if s["images"]]  # a class with no test images has no recall to average
    return {
        "test_accuracy": (predicted == labels).float().mean().item(),
        # what plain accuracy hides on imbalanced classes: every class counts the same, however many images it has
        "test_balanced_accuracy": _mean([s["recall"] for s in present]),
        "test_macro_f1": _mean([s["f1"] for s in present]),
        "test_loss": F.cross_entropy(logits, labels).item(),
        "per_class_accuracy": {c: s["recall"] for c, s in scores.items()},  # None for a class with no test images
        "per_class": scores,
        "confusion_matrix": confusion.tolist(),
        "classes": classes,
        "num_test_images": len(labels),
    }


def class_scores(confusion: torch.Tensor, classes: list[str]) -> dict[str, dict]:
    """Each class's precision, recall and F1 from the confusion matrix (rows: true, columns: predicted), and its
    test images. A share with nothing to divide is None (never predicted: no precision), not 0."""
    hits, images, predicted = confusion.diag().tolist(), confusion.sum(1).tolist(), confusion.sum(0).tolist()
    return {
        c: {
            "precision": _share(tp, shown),
            "recall": _share(tp, n),
            "f1": _share(2 * tp, n + shown),  # 2PR / (P + R), which stays defined while either is
            "images": n,
        }
        for c, tp, n, shown in zip(classes, hits, images, predicted, strict=True)
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _mean(values: list) -> float | None:
    return round(sum(values) / len(values), 6) if values else None
