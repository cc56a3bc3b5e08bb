"""A finished run: `load` opens its folder, and `Run` evaluates and predicts with its model, preprocessing
every image exactly as training did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import Machine, pick_machine
from cnnkit.core.progress import say
from cnnkit.data import load_data
from cnnkit.data.images import DECODE_ERRORS, decode_image, image_to_tensor, resize_images, to_channels, to_square
from cnnkit.data.loader import DeviceBatches
from cnnkit.data.ondisk import DiskImages, loaded
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet
from cnnkit.models import create_model
from cnnkit.models.inference import Classifier, OnnxClassifier, onnx_metadata, probabilities_of
from cnnkit.models.weights import load_weights
from cnnkit.runs.folder import CONFIG, MODEL_INFO, ONNX, SUMMARY, WEIGHTS, WEIGHTS_SHA256, weights_sha256
from cnnkit.runs.records import ModelInfo, RunSummary
from cnnkit.runs.schema import check_same_run, data_fingerprint, require_module
from cnnkit.settings.config import TrainConfig, folder_reading
from cnnkit.training.evaluation import eval_batch, predict_logits, test_metrics


@dataclass
class Run:
    """A trained model with everything needed to use it: its folder, preprocessing and classes."""

    dir: Path
    model: nn.Module
    info: ModelInfo  # model.json: architecture, classes and preprocessing
    config: TrainConfig
    machine: Machine

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def summary(self) -> RunSummary:
        return RunSummary.read(self.dir / SUMMARY)

    def preprocess(self) -> Preprocess:
        return Preprocess(self.info.mean, self.info.std, self.machine.memory_format).to(self.machine.device)

    @property
    def quantized(self) -> bool:
        """An int8 run from `cnnkit compress`: its model is the whole prediction in one ONNX file."""
        return self.info.quantized is not None

    def inference_model(self) -> nn.Module:
        """The whole prediction as one module in float32: uint8 (N, C, H, W) images of the run's channels and
        size in, class probabilities out (preprocessing and the run's TTA built in). What `predict`, an export
        and a server run, with no recipe kept beside it."""
        if self.quantized:
            return self.model  # already the whole prediction, in onnxruntime
        return Classifier(self.preprocess(), self.model, self.config.tta).eval()

    def exported_onnx(self) -> Path | None:
        """RUN/model.onnx if it is this run's prediction as the run is now, else None. An int8 run's model.onnx is its
        model. A float run's (`cnnkit export`'s) must record the hash of RUN/weights.safetensors as it is now: one
        made from other weights (the run trained or resumed since), or by a cnnkit that recorded none, is passed
        over with one warning, and the run's own weights should answer. Reads the file's metadata with onnxruntime."""
        path = self.dir / ONNX
        if self.quantized:
            return path
        if not path.is_file():
            return None
        if onnx_metadata(path).get(WEIGHTS_SHA256) == weights_sha256(self.dir):
            return path
        say(
            f"warning: {path} was exported from other weights than the run's now (trained or resumed since, or "
            f"exported by an older cnnkit): answering from the run's own weights; run `cnnkit export {self.dir}` again"
        )
        return None

    def network(self, purpose: str) -> nn.Module:
        """The trained torch network, for work that needs one (a summary, an export, a compression)."""
        if self.info.quantized is not None:
            raise CnnkitError(
                f"{self.dir} holds an int8 ONNX model from `cnnkit compress`, which cnnkit can predict with, evaluate "
                f"and serve, but cannot {purpose}; use the run it was made from, {self.info.quantized['from']}"
            )
        return self.model

    def probabilities(self, images: torch.Tensor | DiskImages) -> torch.Tensor:
        """uint8 images (N, C, H, W) of the run's channels and size, in memory or on disk -> (N, classes) class
        probabilities in float32, from `inference_model()`."""
        batch = eval_batch(self.info.image_size)
        return probabilities_of(self.inference_model(), images, batch, self.machine.device)

    def evaluate(self, data: str | None = None, data_dir: str | None = None) -> dict:
        """Test metrics from the saved weights: the run's own test split, or the test split of `data`."""
        _, logits, labels = self.test_predictions(data, data_dir)
        return test_metrics(logits, labels, self.classes)

    def test_predictions(
        self, data: str | None = None, data_dir: str | None = None
    ) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
        """The test images (uint8, as the model saw them), their logits and their labels in the run's classes."""
        test = self.split("test", data, data_dir)
        if self.quantized:  # the ONNX model answers in probabilities, whose logs are logits with the same softmax
            return test, self.probabilities(test.images).clamp_min(torch.finfo().tiny).log(), test.labels
        logits, labels = predict_logits(
            self.model,
            DeviceBatches(test, eval_batch(self.info.image_size), self.preprocess()),
            self.machine,
            self.config.tta,
        )
        return test, logits, labels

    def split(self, name: str = "test", data: str | None = None, data_dir: str | None = None) -> ImageSet:
        """The run's own split `name` (train, val or test; refused if its data changed), or that split of `data`,
        in the run's classes, channels and size."""
        cfg = self.config
        dataset = load_data(
            data or cfg.data,
            data_dir=data_dir or cfg.data_dir,
            image_size=self.info.image_size,
            val_fraction=cfg.val_fraction,
            split=cfg.split,
            seed=cfg.seed,
            reading=folder_reading(cfg, self.info.resize),
        )
        if data is None:  # the run's own test split: the same images it was tested on, or a clear refusal
            check_same_run(self.info.to_json(), replace(self.info, data=data_fingerprint(dataset)), f"its {name} split")
        return self._conform(dataset.splits[name], dataset.classes, data or cfg.data)

    def predict_images(
        self, images: Sequence[Image.Image | torch.Tensor] | torch.Tensor, top_k: int = 3
    ) -> list[list[dict]]:
        """For each image in memory (a PIL image, or a uint8 tensor (C, H, W) or batch (N, C, H, W) of any size
        and 1 or 3 channels): its top-k classes with probabilities, preprocessed exactly as in training, in
        float32 (the test metrics are computed at the run's own precision). One image alone is a list of one."""
        if top_k < 1:
            raise CnnkitError(f"--top-k {top_k} must be at least 1")
        if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.ndim == 3):
            images = [images]
        if len(images) == 0:
            return []
        # in float32, as an export runs: the same probabilities from either
        probabilities = self.probabilities(torch.stack([self._as_input(image) for image in images]))
        probs, index = probabilities.topk(min(top_k, len(self.classes)), dim=1)
        return [
            [
                {"class": self.classes[i], "probability": round(p, 6)}
                for p, i in zip(ps.tolist(), ix.tolist(), strict=True)
            ]
            for ps, ix in zip(probs, index, strict=True)
        ]

    def predict(self, paths: list[str | Path], top_k: int = 3) -> list[dict]:
        """For each image file: its top-k classes with probabilities."""
        images = [self._read_image(Path(p)) for p in paths]
        return [
            {"path": str(path), "predictions": predictions}
            for path, predictions in zip(paths, self.predict_images(images, top_k), strict=True)
        ]

    def _as_input(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        size, channels = self.info.image_size, self.info.in_channels
        if isinstance(image, Image.Image):
            try:
                return image_to_tensor(image, size, channels, self.info.resize)
            except ValueError as e:  # an empty image
                raise CnnkitError(f"predict_images: {e}") from None
        if (
            not isinstance(image, torch.Tensor)
            or image.dtype != torch.uint8
            or image.ndim != 3
            or image.shape[0] not in (1, 3)
        ):
            raise CnnkitError(
                "predict_images takes PIL images or uint8 tensors of shape (channels, height, width) "
                f"with 1 or 3 channels; got {_describe(image)}"
            )
        if not image.shape[1] or not image.shape[2]:
            raise CnnkitError(f"predict_images: an empty image ({_describe(image)}) has nothing to classify")
        return resize_images(to_square(to_channels(image[None], channels), self.info.resize), size)[0]

    def _read_image(self, path: Path) -> torch.Tensor:
        if not path.is_file():
            raise CnnkitError(f"image {path} {_not_a_file(path)}")
        try:
            return decode_image(path, self.info.image_size, self.info.in_channels, self.info.resize)
        except DECODE_ERRORS as e:
            raise CnnkitError(f"cannot decode image {path} ({e})") from None

    def _conform(self, test: ImageSet, classes: list[str], source: str) -> ImageSet:
        """Map another data set's labels onto this run's classes and its images onto the run's channels."""
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise CnnkitError(
                f"{source} has classes this run never saw: {', '.join(unknown)}; "
                f"the run knows {', '.join(self.classes)}"
            )
        remap = torch.tensor([self.classes.index(c) for c in classes])
        channels = self.info.in_channels
        images = test.images if test.images.shape[1] == channels else to_channels(loaded(test.images), channels)
        return ImageSet(images, remap[test.labels])


def load(run_dir: str | Path, model: nn.Module | None = None, device: str = "auto") -> Run:
    """Open a run folder written by `train` (or by `cnnkit compress`); pass `model` for runs that trained a
    custom nn.Module."""
    run_dir = Path(run_dir)
    info = ModelInfo.read(run_dir / MODEL_INFO) if (run_dir / MODEL_INFO).is_file() else None
    weights = run_dir / (ONNX if info is not None and info.quantized is not None else WEIGHTS)
    if info is None or not weights.is_file():
        raise CnnkitError(
            f"{run_dir} is not a finished cnnkit run folder (it needs {MODEL_INFO} and {weights.name}); "
            "pass the folder that `cnnkit train` printed at the end"
        )
    require_module(info, model)
    config = TrainConfig.from_yaml(run_dir / CONFIG)
    machine = pick_machine(device, config.precision)
    if info.quantized is not None:
        return Run(run_dir, OnnxClassifier(weights), info, config, machine)
    net = (
        model
        if model is not None
        else create_model(info.model, info.in_channels, len(info.classes), info.image_size, **info.model_options)
    )
    load_weights(net, weights)
    net.to(machine.device, memory_format=machine.memory_format)  # type: ignore[call-overload]
    return Run(run_dir, net.eval(), info, config, machine)


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as an image file, in the words that fit it."""
    if path.is_dir():
        return "is a folder: give the image files in it (e.g. FOLDER/*.jpg)"
    if path.exists():
        return "is not a regular file (a device, a pipe or a socket): give an image file"
    if path.is_symlink():
        return "is a broken link: the file it points to does not exist"
    return "does not exist"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
