"""`cnnkit summary`: a model's layer table and memory, for a model name or a run folder, as text or JSON."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import pick_machine
from cnnkit.core.progress import columns
from cnnkit.inspect.layers import ModelSummary, summarize
from cnnkit.models import AUTO, CUSTOM, check_model_name, create_model, model_spec
from cnnkit.runs.run import Run, load
from cnnkit.settings.config import TrainConfig

DEFAULT_INPUT = (3, 32, 32)  # as `cnnkit models` counts: CIFAR-sized colour images ...
DEFAULT_CLASSES = 10  # ... of ten classes


def model_summary(
    target: str,
    image: str | None = None,
    classes: int | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    precision: str | None = None,
) -> tuple[str, ModelSummary]:
    """The summary of a model name (on `image`, "CxHxW", with `classes` classes) or of a run folder's model
    (its own input and classes), with a title line that says which. Memory at `batch_size` with `optimizer`'s
    state under `precision` (fp32 or bf16); a run's own settings are the defaults, else TrainConfig's."""
    given = {"batch_size": batch_size, "optimizer": optimizer, "precision": precision}
    if Path(target).is_dir():
        if image is not None or classes is not None:
            raise CnnkitError("--input and --classes describe a model name; a run folder has its own")
        return run_summary(load(target, device="cpu"), given)
    if target in (AUTO, CUSTOM):
        raise CnnkitError(f"{target!r} is not one model; name one of `cnnkit models`, or give a run folder")
    check_model_name(target)
    shape, n = _parse_input(image, model_spec(target).input_size), DEFAULT_CLASSES if classes is None else classes
    if n < 2:
        raise CnnkitError(f"--classes {n}: a classifier needs at least 2 classes")
    model = create_model(target, shape[0], n, shape[1])
    return f"{target}: {_shape(shape)}, {n} classes", _summarize(model, target, shape, TrainConfig(), given)


def run_summary(run: Run, given: dict[str, Any] | None = None) -> tuple[str, ModelSummary]:
    """The summary of a loaded run's model, at its own settings but those `given` (None: the run's)."""
    info = run.info
    shape = (info.in_channels, info.image_size, info.image_size)
    title = f"{info.model} from {run.dir}: {_shape(shape)}, {len(info.classes)} classes"
    return title, _summarize(run.network("summarise"), info.model, shape, run.config, given or {})


def _summarize(
    model: nn.Module, name: str, shape: tuple[int, int, int], cfg: TrainConfig, given: dict[str, Any]
) -> ModelSummary:
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})  # checked as flags are
    return summarize(model, model_spec(name), shape, cfg, pick_machine("cpu", cfg.precision))


def _parse_input(text: str | None, model_size: int | None) -> tuple[int, int, int]:
    if text is None:
        return (DEFAULT_INPUT[0], model_size, model_size) if model_size else DEFAULT_INPUT
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not match:
        raise CnnkitError(f"--input {text!r} is not CxHxW, e.g. 1x28x28 (channels x height x width)")
    channels, height, width = (int(g) for g in match.groups())
    if height != width or not 1 <= channels <= 4 or not 8 <= height <= 1024:
        raise CnnkitError(
            f"--input {text}: cnnkit's models take square images of 1 to 4 channels and 8 to 1024 pixels, e.g. 3x32x32"
        )
    return channels, height, width


def format_summary(title: str, summary: ModelSummary) -> list[str]:
    """The layer table and the memory figures, as the terminal shows them."""
    rows = [
        (layer.name, layer.kind, _shape(layer.output), f"{layer.parameters:,}", f"{layer.macs:,}")
        for layer in summary.layers
    ]
    rows.append(("total", "", "", f"{summary.parameters:,}", f"{summary.macs:,}"))
    header = ("layer", "kind", "output", "parameters", "mult-adds")
    memory = summary.memory
    return [
        title,
        *columns([header, *rows], left=2),
        f"trainable parameters {summary.trainable:,}; {summary.macs / 1e6:,.2f} M multiply-accumulates per image",
        f"memory at batch {summary.batch_size}, {summary.precision}, {summary.optimizer}:",
        f"  weights      {_mib(memory.weights)}  (parameters and batch-norm statistics)",
        f"  gradients    {_mib(memory.gradients)}",
        f"  optimizer    {_mib(memory.optimizer)}  ({summary.optimizer}'s state)",
        f"  activations  {_mib(memory.activations)}  (what the backward pass needs from the forward pass)",
        f"  training     {_mib(memory.training)}  (the four above)",
        f"  inference    {_mib(memory.inference)}  (weights, and one layer's input and output at once)",
    ]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _mib(size: int) -> str:
    return f"{size / 2**20:10,.2f} MiB"
