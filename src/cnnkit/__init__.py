"""cnnkit: build, train, evaluate and use convolutional image classifiers.

import cnnkit
run = cnnkit.train(data="mnist", model="simplecnn", epochs=1)
run.evaluate()["test_accuracy"]
run.predict(["digit.png"])
run = cnnkit.load("runs/mnist-simplecnn-20260101-120000")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from cnnkit.compress import prune, quantize  # noqa: E402
from cnnkit.config import TrainConfig  # noqa: E402
from cnnkit.errors import CnnkitError  # noqa: E402
from cnnkit.models import create_model, model_names, register  # noqa: E402
from cnnkit.run import Run, load  # noqa: E402
from cnnkit.session import lr_find, resume, train  # noqa: E402
from cnnkit.sweep import sweep  # noqa: E402
from cnnkit.training.events import Callback  # noqa: E402

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
