"""A run's context: the settings with their data-dependent defaults filled in, the data, the model and what
cnnkit knows of it, the machine, the run folder and the preprocessing, made once by `prepare`."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.config import TrainConfig
from cnnkit.data import DIGIT_DATA, AtMost, Dataset, Reading, is_folder, load_data
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.splits import chunk_rows
from cnnkit.errors import CnnkitError
from cnnkit.machine import Machine
from cnnkit.models import AUTO, CUSTOM, ModelSpec, create_model, model_spec, num_parameters
from cnnkit.models.pretrained import download, load_pretrained
from cnnkit.models.whitening import whiten_conv
from cnnkit.optimizers import PRETRAINED_HEAD_RATE
from cnnkit.progress import say
from cnnkit.recipes import auto_size, fit_to_data
from cnnkit.rules import check_processes
from cnnkit.rundir import WEIGHTS, RunFolder
from cnnkit.schema import model_info_problem
from cnnkit.weights import load_weights

DESCRIPTION = ("model", "model_options", "classes", "in_channels", "image_size", "mean", "std", "resize")  # must match
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
    info: dict  # model.json: architecture, classes and preprocessing


def prepare(
    cfg: TrainConfig,
    module: nn.Module | None,
    machine: Machine,
    folder: RunFolder,
    fresh: bool = True,
    given: frozenset[str] | None = None,
) -> RunContext:
    """Load the data, fit the recipe to it, fill the data-dependent settings, and build and initialise the
    model. The automatic recipe or a preset chooses what the user did not set (`given`; None: everything was
    set, as in a resumed run). A resumed run, not `fresh`, skips --init-from: its checkpoint holds the
    weights, even after the source is gone."""
    auto = cfg.model == AUTO
    with machine.main_first():  # the main process decodes into the cache (or downloads); the others read it
        data = _load(
            cfg,
            cfg.image_size or (AtMost(auto_size(machine)) if auto else model_spec(cfg.model, module).input_size),
        )
    cfg, chosen = fit_to_data(cfg, data, machine, given) if given is not None else (cfg, "")
    if chosen:
        say(chosen)
    if cfg.image_size is not None and cfg.image_size != data.image_size:  # the recipe chose another size
        with machine.main_first():
            data = _load(cfg, cfg.image_size, listed=False)  # its skipped files were listed by the first read
    spec = model_spec(cfg.model, module)
    cfg = resolved(cfg, data)
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
    if cfg.whiten:
        sample = Preprocess(mean, std)(data.splits["train"].images[:WHITENING_SAMPLE])
        whiten_conv(spec.first_conv_module(net, "--whiten"), sample)
    if (cfg.init_from or cfg.starts_pretrained) and fresh:
        _start_from(net, spec, cfg)
    info = {
        "cnnkit_version": __version__,
        "model": cfg.model,
        "model_options": spec.architecture(options),
        "in_channels": data.channels,
        "image_size": data.image_size,
        "classes": data.classes,
        "mean": mean,
        "std": std,
        "resize": cfg.resize,
        "num_parameters": num_parameters(net),
        "data": data_fingerprint(data),
    }
    if module is not None:
        info["module"] = type(module).__name__
    preprocess = Preprocess(mean, std, machine.memory_format).to(machine.device)
    if machine.rank:  # the same initial weights everywhere, then each further process its own dropout masks
        torch.manual_seed(hash((cfg.seed, machine.rank)) % 2**63)
    return RunContext(cfg, data, net, spec, machine, folder, preprocess, info)


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


def folder_reading(cfg: TrainConfig, resize: str) -> Reading:
    """How a run reads a folder's files: bad ones, the resize rule, and --memory-budget (GiB) in bytes."""
    return Reading(cfg.skip_bad_images, resize, int(cfg.memory_budget * 2**30) if cfg.memory_budget else None)


def resolved(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Fill the data-dependent defaults, so config.yaml repeats the run even if defaults change later."""
    # pretrained filters need small steps, a new head big ones (--lr auto: the range test splits its rate)
    if cfg.starts_pretrained and cfg.head_lr is None and cfg.lr != AUTO:
        cfg = dataclasses.replace(cfg, head_lr=cfg.peak_lr, lr=cfg.peak_lr / PRETRAINED_HEAD_RATE)
    return dataclasses.replace(
        cfg,
        data=str(Path(cfg.data).expanduser().resolve()) if is_folder(cfg.data) else cfg.data,
        data_dir=str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else None,
        init_from=str(Path(cfg.init_from).expanduser().resolve()) if cfg.init_from else None,
        pretrained_weights=str(Path(cfg.pretrained_weights).expanduser().resolve()) if cfg.pretrained_weights else None,
        image_size=data.image_size,
        # random-crop padding: 28 px images get 2, 32 px get 3, 8 px none
        translate=cfg.translate if cfg.translate is not None else data.image_size // 10,
        flip=cfg.flip if cfg.flip is not None else cfg.data not in DIGIT_DATA,
        epochs=15 if cfg.epochs is None and cfg.steps is None and cfg.budget is None else cfg.epochs,
        rotate=cfg.rotate or 0.0,
        scale=cfg.scale or 0.0,
        jitter=cfg.jitter or 0.0,
        erase=cfg.erase or 0.0,
    )


def _normalisation(spec: ModelSpec, data: Dataset) -> tuple[list[float], list[float]]:
    """The model's own normalisation (a pretrained backbone's, averaged over colours for grey images), else
    the training images' own."""
    if not (spec.mean and spec.std):
        return data.mean, data.std
    if data.channels == 1:
        return [sum(spec.mean) / len(spec.mean)], [sum(spec.std) / len(spec.std)]
    return list(spec.mean), list(spec.std)


def data_fingerprint(data: Dataset) -> dict:
    """What pins a run's data down: each split's size, and a hash of its labels and a grid of its pixels
    (every 4th row and column: any changed, added or moved image shows, at a 16th of the cost)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("train", "val", "test"):
        part = data.splits[name]
        digest.update(f"|{name}|".encode())
        digest.update(part.labels.numpy().tobytes())
        for chunk in part.images.split(chunk_rows(part.images)):  # in chunks: the images may be on disk
            digest.update(chunk[..., ::4, ::4].contiguous().numpy().tobytes())
    return {"sizes": {name: len(part) for name, part in data.splits.items()}, "hash": digest.hexdigest()}


def check_same_run(recorded: dict, now: dict, what: str) -> None:
    """Refuse to use `what` (a checkpoint, a run's test split) whose recorded description differs from the run
    as it is now: another model, other classes or preprocessing, or data that changed since."""
    problem = model_info_problem(recorded)
    if problem:
        raise CnnkitError(f"{what} describes its model wrongly ({problem}): it was edited or damaged")
    if "data" in recorded and recorded["data"] != now["data"]:
        then, later = _sizes(recorded), _sizes(now)
        raise CnnkitError(
            f"the data changed since this run was trained (train/val/test images then {then}, now {later}, or "
            f"their content), so {what} no longer matches it. To measure the run on new images, use "
            "`cnnkit eval RUN --data NEW-FOLDER`; to learn from them, train a new run; to go on, put the data back"
        )
    differs = [
        f"{k}: {recorded[k]!r} there, {now.get(k)!r} here"
        for k in DESCRIPTION
        if k in recorded and not _same(recorded[k], now.get(k))
    ]
    if differs:
        raise CnnkitError(
            f"{what} was written for another model or preprocessing ({'; '.join(differs[:3])}); "
            "use the run folder it came from"
        )


def _same(recorded, now) -> bool:
    """Equal, but for the last bits of the data's mean and std, which depend on how many threads summed them."""
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        return all(
            math.isclose(a, b, rel_tol=1e-6) if isinstance(a, float) else a == b
            for a, b in zip(recorded, now, strict=True)
        )
    return recorded == now


def _sizes(info: dict) -> str:
    try:
        return "/".join(str(info["data"]["sizes"][s]) for s in ("train", "val", "test"))
    except (KeyError, TypeError):
        return "unknown"


def require_module(info: dict, module: nn.Module | None) -> None:
    """A run of a module passed in from Python can only be loaded or resumed with an instance of it."""
    if info["model"] == CUSTOM and module is None:
        name = info.get("module", "MyNet")
        raise CnnkitError(
            f"this run trained a custom nn.Module ({name}), which cnnkit cannot rebuild by name; in "
            f"Python, pass an instance: cnnkit.load(run_dir, model={name}(...)), or "
            f"cnnkit.resume(run_dir, model={name}(...))"
        )


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
