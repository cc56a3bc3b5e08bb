"""cnnkit: build, train, evaluate and use convolutional image classifiers.

import cnnkit
run = cnnkit.train(data="mnist", model="simplecnn", epochs=1)
run.evaluate()["test_accuracy"]
run.predict(["digit.png"])
run = cnnkit.load("runs/mnist-simplecnn-20260101-120000")
"""

from cnnkit.core.errors import CnnkitError
from cnnkit.core.version import __version__
from cnnkit.models import create_model, model_names, register
from cnnkit.runs.run import Run, load
from cnnkit.session.train import lr_find, resume, train
from cnnkit.settings.config import TrainConfig
from cnnkit.ship.compress import prune, quantize
from cnnkit.training.events import Callback
from cnnkit.tune.sweep import sweep

__all__ = [
    "Callback",
    "CnnkitError",
    "Run",
    "TrainConfig",
    "__version__",
    "create_model",
    "load",
    "lr_find",
    "model_names",
    "prune",
    "quantize",
    "register",
    "resume",
    "sweep",
    "train",
]
