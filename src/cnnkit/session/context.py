"""A run's context: the settings with their data-dependent defaults filled in, the data, the model and what
cnnkit knows of it, the machine, the run folder and the preprocessing, made once by `prepare`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import Machine
from cnnkit.core.progress import say
from cnnkit.core.version import __version__
from cnnkit.data import AtMost, Dataset, load_data
from cnnkit.data.preprocess import Preprocess
from cnnkit.models import AUTO, ModelSpec, create_model, model_spec, num_parameters
from cnnkit.models.pretrained import download, load_pretrained
from cnnkit.models.weights import load_weights
from cnnkit.models.whitening import whiten_conv
from cnnkit.runs.folder import MODEL_INFO, WEIGHTS, RunFolder
from cnnkit.runs.records import ModelInfo, RunPlan
from cnnkit.runs.schema import data_fingerprint
from cnnkit.settings.config import TrainConfig, folder_reading
from cnnkit.settings.recipes import auto_size, settle
from cnnkit.settings.rules import check_processes

WHITENING_SAMPLE = 5000  # training images whose patches estimate the whitening: enough for a stable covariance


@dataclass
class RunContext:
    cfg: TrainConfig
    data: Dataset
    model: nn.Module
    spec: ModelSpec
    machine: Machine
    folder: RunFolder
    preprocess: Preprocess  # on the machine's device
    info: ModelInfo  # model.json: architecture, classes and preprocessing
    plan: RunPlan = dataclasses.field(default_factory=RunPlan)  # what the run decides as it goes
    own_model: bool = False  # a fresh run whose model the user chose (not the automatic recipe): advice may differ

    @property
    def settings(self) -> TrainConfig:
        """The settings the run trains with: its own, with what it has decided so far in place."""
        return self.plan.applied_to(self.cfg)


def prepare(
    cfg: TrainConfig,
    module: nn.Module | None,
    machine: Machine,
    folder: RunFolder,
    fresh: bool = True,
) -> RunContext:
    """Load the data, settle the settings on it (`cnnkit.settings.recipes.settle`), and build and initialise
    the model. A resumed run, not `fresh`, skips --init-from: its checkpoint holds the weights, even after the
    source is gone."""
    auto = cfg.model == AUTO
    with machine.main_first():  # the main process decodes into the cache (or downloads); the others read it
        data = _load(
            cfg,
            cfg.image_size or (AtMost(auto_size(machine)) if auto else model_spec(cfg.model, module).input_size),
        )
    cfg, chosen = settle(cfg, data, machine, _source_run(cfg))
    if chosen:
        say(chosen)
    if cfg.image_size is not None and cfg.image_size != data.image_size:  # the recipe chose another size
        data = load_at(cfg, cfg.image_size, machine)
    return dataclasses.replace(build(cfg, data, module, machine, folder, fresh), own_model=fresh and not auto)


def load_at(cfg: TrainConfig, image_size: int, machine: Machine) -> Dataset:
    """The data again at another size (decoded once into its cache); its skipped files were listed by the
    first read."""
    with machine.main_first():
        return _load(cfg, image_size, listed=False)


def build(
    cfg: TrainConfig, data: Dataset, module: nn.Module | None, machine: Machine, folder: RunFolder, fresh: bool = True
) -> RunContext:
    """The model for settled settings and data, built and initialised, with its preprocessing and model.json."""
    spec = model_spec(cfg.model, module)
    check_processes(cfg, machine)
    if cfg.translate is not None and cfg.translate >= data.image_size:  # a crop cannot shift past the image
        raise CnnkitError(
            f"--translate {cfg.translate} must be smaller than the {data.image_size}-pixel images; "
            f"try {data.image_size // 10}"
        )
    mean, std = _normalisation(spec, data)
    torch.manual_seed(cfg.seed)  # the same seed gives the same initial weights, dropout masks and order
    options = {k: v for k in ("dropout", "activation") if (v := getattr(cfg, k)) is not None}  # the model's own
    net = (
        module
        if module is not None
        else create_model(cfg.model, data.channels, len(data.classes), data.image_size, **options)
    )
    _check_batch_norm(net, cfg, machine)
    if cfg.whiten:
        sample = Preprocess(mean, std)(data.splits["train"].images[:WHITENING_SAMPLE])
        whiten_conv(spec.first_conv_module(net, "--whiten"), sample)
    if (cfg.init_from or cfg.starts_pretrained) and fresh:
        _start_from(net, spec, cfg)
    info = ModelInfo(
        model=cfg.model,
        model_options=spec.architecture(options),
        in_channels=data.channels,
        image_size=data.image_size,
        classes=data.classes,
        mean=mean,
        std=std,
        resize=cfg.resize,
        cnnkit_version=__version__,
        num_parameters=num_parameters(net),
        data=data_fingerprint(data),
        module=None if module is None else type(module).__name__,
    )
    preprocess = Preprocess(mean, std, machine.memory_format).to(machine.device)
    if machine.rank:  # the same initial weights everywhere, then each further process its own dropout masks
        torch.manual_seed(hash((cfg.seed, machine.rank)) % 2**63)
    return RunContext(cfg, data, net, spec, machine, folder, preprocess, info)


def _check_batch_norm(net: nn.Module, cfg: TrainConfig, machine: Machine) -> None:
    """Batch norm learns from each batch's statistics: a process's batch of one image has none (and fails
    at the first layer whose output is one pixel), so it is refused before training rather than midway."""
    share = cfg.batch_size // machine.world_size
    if share < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        each = f" ({share} a process)" if machine.world_size > 1 else ""
        raise CnnkitError(
            f"--batch-size {cfg.batch_size}{each} is too small for {cfg.model}: its batch norm layers need at "
            "least 2 images a batch; give --batch-size 2 or more (16 or more trains better), or a model "
            "without batch norm (simplecnn)"
        )


def _load(cfg: TrainConfig, image_size: int | None, listed: bool = True) -> Dataset:
    return load_data(
        cfg.data,
        data_dir=cfg.data_dir,
        image_size=image_size,
        val_fraction=cfg.val_fraction,
        split=cfg.split,
        seed=cfg.seed,
        reading=dataclasses.replace(folder_reading(cfg, cfg.resize), listed=listed),
    )


def _source_run(cfg: TrainConfig) -> dict | None:
    """The model.json of the run this one fine-tunes (--init-from), when it has one."""
    info = Path(cfg.init_from or "") / MODEL_INFO
    return ModelInfo.read(info).to_json() if cfg.init_from and info.is_file() else None


def _normalisation(spec: ModelSpec, data: Dataset) -> tuple[list[float], list[float]]:
    """The model's own normalisation (a pretrained backbone's, averaged over colours for grey images), else
    the training images' own."""
    if not (spec.mean and spec.std):
        return data.mean, data.std
    if data.channels == 1:
        return [sum(spec.mean) / len(spec.mean)], [sum(spec.std) / len(spec.std)]
    return list(spec.mean), list(spec.std)


def _start_from(net: nn.Module, spec: ModelSpec, cfg: TrainConfig) -> None:
    """Fine-tuning: the weights of a finished run (--init-from) or pretrained ones, with a new head if needed."""
    if cfg.init_from:
        path = Path(cfg.init_from) / WEIGHTS
        if not path.is_file():
            raise CnnkitError(f"--init-from {cfg.init_from} is not a finished cnnkit run folder (it has no {WEIGHTS})")
        fresh = load_weights(net, path, remake_head=spec.head)
    else:
        path = Path(cfg.pretrained_weights) if cfg.pretrained_weights else download(spec)
        fresh = load_pretrained(net, spec, path)
    remade = f"; made anew for the new classes: {', '.join(fresh)}" if fresh else ""
    say(f"starting from the weights in {path}{remade}")
