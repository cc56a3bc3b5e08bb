"""Presets: complete, tuned recipes. Each is a set of TrainConfig values; any flag given still wins.

A preset names a default data set, but works on any data of its kind: `mnist-fast` on any small
grayscale digits, the `cifar10-*` ones on any folder of colour images, at the image size it was tuned
for. Its length is in optimiser steps (one pass over its data set's training split, or several), so it
does not shrink to a dozen updates on a small folder; there, `recipes.fitted_preset` also cuts the
batch (rescaling the rates) so that a pass is at least a few steps.
"""

from __future__ import annotations

from cnnkit.core.errors import CnnkitError

# one recipe in a few lines, as airbench keeps its hyperparameters: read at a glance
# fmt: off
PRESETS: dict[str, dict] = {
    "mnist-fast": {
        "about": "MNIST-like 28x28 grayscale data to 99% test accuracy in seconds, even on a laptop CPU",
        "data": "mnist", "image_size": 28, "model": "fastcnn-small", "whiten": False, "steps": 421, "batch_size": 128,
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "onecycle", "warmup": 0.2, "label_smoothing": 0.1, "translate": 2, "flip": False,
        "ema": 0.0, "tta": False, "precision": "auto",
    },
    "cifar10-cpu": {
        "about": "CIFAR-like 32x32 colour data past the PyTorch tutorial's 53% in seconds on a laptop CPU",
        "data": "cifar10", "image_size": 32, "model": "small-cnn", "whiten": False, "steps": 351, "batch_size": 128,
        "optimizer": "adamw", "lr": 6e-3, "weight_decay": 0.01, "schedule": "onecycle", "warmup": 0.25,
        "label_smoothing": 0.0, "translate": 0, "flip": False,  # one pass: augmentation would only slow learning
        "ema": 0.0, "tta": False, "precision": "auto",
    },
    "cifar10-cpu-best": {
        "about": "CIFAR-like 32x32 colour data to about 81% in about 90 seconds on a 2-core CPU",
        "data": "cifar10", "image_size": 32, "model": "fastcnn-small", "whiten": True, "steps": 1050, "batch_size": 256,
        "optimizer": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "onecycle", "warmup": 0.25, "label_smoothing": 0.2, "translate": 2, "flip": True,
        "ema": 0.0, "tta": True, "precision": "auto",
    },
    "cifar10-fast": {
        # airbench94_muon's recipe in cnnkit's terms. Its loss is summed over the batch, cnnkit's is the mean:
        # its per-image SGD rates times its 2000-image batch give lr and head_lr (head_lr also divided by
        # 256^2, since its head divides the output by its width); weight_decay is its 2e-6 x 2000
        "about": "CIFAR-like 32x32 colour data, airbench94_muon's recipe: 90.5% on the CIFAR-10 JPEG copy in 8 "
                 "epochs; for GPUs, with --compile",
        "data": "cifar10", "image_size": 32, "model": "fastcnn", "whiten": True, "steps": 200, "batch_size": 2000,
        "optimizer": "muon", "muon_lr": 0.24, "muon_momentum": 0.6,  # conv filters
        "lr": 106.0, "head_lr": 0.0204, "momentum": 0.85, "nesterov": True, "weight_decay": 0.004,  # the rest
        "schedule": "onecycle", "warmup": 0.0, "label_smoothing": 0.2, "translate": 2, "flip": True,
        "ema": 0.0, "tta": True, "precision": "auto",
    },
    "cifar10-best": {
        "about": "CIFAR-like 32x32 colour data: the best accuracy in minutes on a GPU rather than seconds",
        "data": "cifar10", "image_size": 32, "model": "resnet9", "whiten": False, "steps": 3480, "batch_size": 512,
        "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "onecycle", "warmup": 0.15, "label_smoothing": 0.1, "translate": 4, "flip": True,
        "ema": 0.999, "tta": True, "precision": "auto",
    },
}
# fmt: on


def preset_settings(name: str | None) -> dict:
    """The preset's TrainConfig values (without its description); {} for no preset."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise CnnkitError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (`cnnkit presets` lists them)")
    return {k: v for k, v in PRESETS[name].items() if k != "about"}
