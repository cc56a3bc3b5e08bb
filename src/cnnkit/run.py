"""A run end to end: `train` makes a run folder, `load` opens one, `Run` evaluates and predicts with it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit import __version__
from cnnkit.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from cnnkit.config import TrainConfig
from cnnkit.data import DIGIT_DATA, Dataset, data_name, is_folder, load_data
from cnnkit.data.images import DECODE_ERRORS, decode_image
from cnnkit.data.loader import DeviceBatches, Normalize
from cnnkit.data.sets import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.evaluation import predict_logits, test_metrics
from cnnkit.machine import Machine, pick_machine
from cnnkit.models import create_model, num_parameters
from cnnkit.models.whitening import whiten_first_conv
from cnnkit.progress import say
from cnnkit.rundir import (
    CONFIG,
    METRICS,
    MODEL_INFO,
    SUMMARY,
    WEIGHTS,
    MetricsLog,
    ensure_free_space,
    load_weights,
    new_run_dir,
    read_json,
    remove_if_empty,
    save_weights,
    write_json,
)
from cnnkit.training import TrainingInterrupted, compile_warmup, fit, stop_on_signals

EVAL_BATCH = 1024


@dataclass
class Run:
    """A trained model with everything needed to use it: its folder, preprocessing and classes."""

    dir: Path
    model: nn.Module
    info: dict  # model.json: architecture, classes and preprocessing
    config: TrainConfig
    machine: Machine

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def summary(self) -> dict:
        return read_json(self.dir / SUMMARY)

    def evaluate(self, data: str | None = None, data_dir: str | None = None) -> dict:
        """Test metrics from the saved weights: the run's own test split, or the test split of `data`."""
        cfg = self.config
        image_size = cfg.image_size if data is None else self.info["image_size"]
        dataset = load_data(data or cfg.data, data_dir or cfg.data_dir, image_size, cfg.val_fraction, cfg.split,
                            cfg.seed, cfg.skip_bad_images)
        test = self._conform(dataset.splits["test"], dataset.classes, data or cfg.data)
        logits, labels = predict_logits(self.model, self._batches(test), self.machine, cfg.tta)
        return test_metrics(logits, labels, self.classes)

    def predict(self, paths: list[str | Path], top_k: int = 3) -> list[dict]:
        """For each image file: its top-k classes with probabilities, preprocessed exactly as in training."""
        if top_k < 1:
            raise CnnkitError(f"--top-k {top_k} must be at least 1")
        images = torch.stack([self._read_image(Path(p)) for p in paths])
        unlabelled = ImageSet(images, torch.zeros(len(images), dtype=torch.long))
        logits, _ = predict_logits(self.model, self._batches(unlabelled), self.machine, self.config.tta)
        probs, index = logits.softmax(1).topk(min(top_k, len(self.classes)), dim=1)
        return [{"path": str(path), "predictions": [{"class": self.classes[i], "probability": round(p, 6)}
                                                    for p, i in zip(ps.tolist(), ix.tolist())]}
                for path, ps, ix in zip(paths, probs, index)]

    def _batches(self, data: ImageSet) -> DeviceBatches:
        normalize = Normalize(self.info["mean"], self.info["std"], self.machine.device, self.machine.memory_format)
        return DeviceBatches(data, EVAL_BATCH, normalize, self.machine.device)

    def _read_image(self, path: Path) -> torch.Tensor:
        if not path.is_file():
            raise CnnkitError(f"image {path} does not exist")
        try:
            return decode_image(path, self.info["image_size"], self.info["in_channels"])
        except DECODE_ERRORS as e:
            raise CnnkitError(f"cannot decode image {path} ({e})") from None

    def _conform(self, test: ImageSet, classes: list[str], source: str) -> ImageSet:
        """Map another data set's labels onto this run's classes and its images onto the run's channels."""
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise CnnkitError(f"{source} has classes this run never saw: {', '.join(unknown)}; "
                              f"the run knows {', '.join(self.classes)}")
        remap = torch.tensor([self.classes.index(c) for c in classes])
        images, channels = test.images, self.info["in_channels"]
        if images.shape[1] != channels:  # gray <-> colour, as decode_image would convert
            images = images.expand(-1, 3, -1, -1) if channels == 3 else images.float().mean(1, keepdim=True).byte()
        return ImageSet(images, remap[test.labels])


def train(config: TrainConfig | None = None, *, model: nn.Module | str | None = None, **settings) -> Run:
    """Train a classifier and write its run folder. `model` is a registered name or any nn.Module.

    Example: `cnnkit.train(data="mnist", model="simplecnn", epochs=1)`.
    """
    custom = model if isinstance(model, nn.Module) else None
    if isinstance(model, str):
        settings["model"] = model
    if custom is not None:
        settings["model"] = f"custom:{type(custom).__name__}"
    cfg = TrainConfig.from_dict({**(dataclasses.asdict(config) if config else {}), **settings}).validate()
    machine = pick_machine(cfg.device, cfg.precision)
    run_dir = new_run_dir(cfg.out, data_name(cfg.data), cfg.model.removeprefix("custom:"))  # fail fast if unwritable
    try:
        data, cfg, net = _prepare(cfg, custom)
    except BaseException:
        remove_if_empty(run_dir)  # a run that never started leaves no empty folder behind
        raise
    dataclasses.replace(cfg, out=None).to_yaml(run_dir / CONFIG)  # repeating a run makes a new folder
    info = _model_info(cfg, data, net)
    write_json(run_dir / MODEL_INFO, info)
    return _run(net, data, cfg, machine, run_dir, info)


def resume(run_dir: str | Path, model: nn.Module | None = None) -> Run:
    """Continue a stopped run from its newest whole checkpoint; on the CPU the result is bit-identical
    to a run that was never stopped. Pass `model` for runs that trained a custom nn.Module."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    cfg = TrainConfig.from_yaml(run_dir / CONFIG)
    machine = pick_machine(cfg.device, cfg.precision)
    data, cfg, net = _prepare(cfg, model)
    position = state["position"]
    say(f"resuming {run_dir} at epoch {position['epoch']}, step {position['step']}")
    return _run(net, data, cfg, machine, run_dir, read_json(run_dir / MODEL_INFO), state)


def _prepare(cfg: TrainConfig, custom: nn.Module | None) -> tuple[Dataset, TrainConfig, nn.Module]:
    data = load_data(cfg.data, cfg.data_dir, cfg.image_size, cfg.val_fraction, cfg.split, cfg.seed,
                     cfg.skip_bad_images)
    cfg = _resolved(cfg, data)
    torch.manual_seed(cfg.seed)  # the same seed gives the same initial weights, dropout masks and order
    net = custom if custom is not None else create_model(
        cfg.model, data.channels, len(data.classes), data.image_size,
        **({"dropout": cfg.dropout} if cfg.dropout is not None else {}))
    if cfg.whiten:
        whiten_first_conv(net, _whitening_sample(data))
    if cfg.init_from:
        _init_from(net, Path(cfg.init_from))
    return data, cfg, net


def _init_from(net: nn.Module, run_dir: Path) -> None:
    if not (run_dir / WEIGHTS).is_file():
        raise CnnkitError(f"--init-from {run_dir} is not a finished cnnkit run folder (it has no {WEIGHTS})")
    fresh = load_weights(net, run_dir / WEIGHTS, remake_head=True)
    remade = f"; made anew for the new classes: {', '.join(fresh)}" if fresh else ""
    say(f"starting from the weights of {run_dir}{remade}")


def _run(net: nn.Module, data: Dataset, cfg: TrainConfig, machine: Machine, run_dir: Path, info: dict,
         resume_state: dict | None = None) -> Run:
    # weights, plus a checkpoint with optimiser moments and a weight average, each written beside the last
    ensure_free_space(run_dir, 8 * 4 * num_parameters(net) + 8 * len(data.splits["train"]))
    net.to(machine.device, memory_format=machine.memory_format)
    try:
        summary = _train_and_test(net, data, cfg, machine, run_dir, info, resume_state)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{e}. Resume with: cnnkit train --resume {run_dir}") from None
    say(f"test accuracy {summary['test_accuracy']:.4f}, loss {summary['test_loss']:.4f}; "
        f"run saved in {run_dir}")
    return Run(run_dir, net, info, cfg, machine)


def load(run_dir: str | Path, model: nn.Module | None = None, device: str = "auto") -> Run:
    """Open a run folder written by `train`; pass `model` for runs that trained a custom nn.Module."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_INFO).is_file() or not (run_dir / WEIGHTS).is_file():
        raise CnnkitError(f"{run_dir} is not a finished cnnkit run folder (it needs {MODEL_INFO} and {WEIGHTS}); "
                          "pass the folder that `cnnkit train` printed at the end")
    info = read_json(run_dir / MODEL_INFO)
    config = TrainConfig.from_yaml(run_dir / CONFIG)
    machine = pick_machine(device, config.precision)
    net = model if model is not None else create_model(info["model"], info["in_channels"], len(info["classes"]),
                                                       info["image_size"], **info["model_options"])
    load_weights(net, run_dir / WEIGHTS)
    net.to(machine.device, memory_format=machine.memory_format)
    return Run(run_dir, net.eval(), info, config, machine)


def _resolved(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Fill the data-dependent defaults, so config.yaml repeats the run even if defaults change later."""
    return dataclasses.replace(
        cfg,
        data=str(Path(cfg.data).resolve()) if is_folder(cfg.data) else cfg.data,
        data_dir=str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir else None,
        init_from=str(Path(cfg.init_from).expanduser().resolve()) if cfg.init_from else None,
        # random-crop padding: 28 px images get 2, 32 px get 3, 8 px none
        translate=cfg.translate if cfg.translate is not None else data.image_size // 10,
        flip=cfg.flip if cfg.flip is not None else cfg.data not in DIGIT_DATA,
    )


def _whitening_sample(data: Dataset, size: int = 5000) -> torch.Tensor:
    """A fixed slice of normalised training images: enough patches for a stable covariance estimate."""
    return Normalize(data.mean, data.std, torch.device("cpu"))(data.splits["train"].images[:size])


def _model_info(cfg: TrainConfig, data: Dataset, net: nn.Module) -> dict:
    return {"cnnkit_version": __version__, "model": cfg.model,
            "model_options": {"dropout": cfg.dropout} if cfg.dropout is not None else {},
            "in_channels": data.channels, "image_size": data.image_size, "classes": data.classes,
            "mean": data.mean, "std": data.std, "num_parameters": num_parameters(net)}


def _train_and_test(net: nn.Module, data: Dataset, cfg: TrainConfig, machine: Machine, run_dir: Path, info: dict,
                    resume_state: dict | None) -> dict:
    normalize = Normalize(data.mean, data.std, machine.device, machine.memory_format)
    train_batches = DeviceBatches(data.splits["train"], cfg.batch_size, normalize, machine.device, shuffle=True,
                                  translate=cfg.translate, flip=cfg.flip, seed=cfg.seed)
    val = data.splits["val"]
    val_batches = DeviceBatches(val, EVAL_BATCH, normalize, machine.device) if len(val) else None
    _announce(net, data, cfg, machine, run_dir)
    step_model = torch.compile(net) if cfg.compile else net  # weights stay shared with `net`
    compile_seconds = 0.0
    if cfg.compile:  # compiled before the clock starts, and reported on its own
        train_size = min(cfg.batch_size, len(data.splits["train"]))
        compile_seconds = compile_warmup(step_model, data.splits["train"], normalize, train_size,
                                         _eval_batch_sizes(data), machine, cfg.tta)
        say(f"compiled the model in {compile_seconds:.1f}s")
    first_epoch = resume_state["position"]["epoch"] if resume_state else 1
    log = MetricsLog(run_dir / METRICS, keep_before_epoch=first_epoch)
    progress = resume_state["run"] if resume_state else {"best_score": -1.0, "best_epoch": 0, "train_seconds": 0.0}

    def save(state: dict) -> None:
        # the checkpoint describes itself: cnnkit version, model and options, classes, preprocessing
        save_checkpoint(run_dir / CHECKPOINT, {**state, "run": progress, "model_info": info})

    with stop_on_signals() as stop:
        for result, kept in fit(step_model, train_batches, val_batches, cfg, machine, save, resume_state, stop):
            progress["train_seconds"] += result.seconds
            log.append(dataclasses.asdict(result))
            say(_epoch_line(result, cfg.epochs))
            score = result.val_accuracy if result.val_accuracy is not None else result.epoch  # no val: the last
            if score > progress["best_score"]:
                progress["best_score"], progress["best_epoch"] = score, result.epoch
                save_weights(kept, run_dir / WEIGHTS)  # best-by-validation weights, on disk as soon as they exist
    load_weights(net, run_dir / WEIGHTS)
    started = time.perf_counter()
    test_batches = DeviceBatches(data.splits["test"], EVAL_BATCH, normalize, machine.device)
    logits, labels = predict_logits(step_model, test_batches, machine, cfg.tta)
    metrics = test_metrics(logits, labels, data.classes)
    test_seconds = time.perf_counter() - started
    summary = {
        **metrics, "epochs": cfg.epochs, "best_epoch": progress["best_epoch"],
        "val_accuracy": progress["best_score"] if val_batches else None,
        "train_seconds": round(progress["train_seconds"], 3),
        "compile_seconds": round(compile_seconds, 3), "test_seconds": round(test_seconds, 3),
        "num_parameters": num_parameters(net), "num_train_images": len(data.splits["train"]),
        "num_val_images": len(val), "data": cfg.data,
        "model": cfg.model, "device": str(machine.device), "bf16": machine.bf16, "skipped_images": data.skipped,
        "cnnkit_version": __version__,
    }
    write_json(run_dir / SUMMARY, summary)
    return summary


def _eval_batch_sizes(data: Dataset) -> set[int]:
    """Every batch size the validation and test passes will see: full batches and each split's remainder."""
    sizes = {len(data.splits[s]) for s in ("val", "test")} - {0}
    return {size for n in sizes for size in (min(n, EVAL_BATCH), n % EVAL_BATCH)} - {0}


def _announce(net: nn.Module, data: Dataset, cfg: TrainConfig, machine: Machine, run_dir: Path) -> None:
    sizes = "/".join(str(len(data.splits[s])) for s in ("train", "val", "test"))
    say(f"cnnkit: {cfg.model} ({num_parameters(net):,} parameters) on {data.name}: {sizes} train/val/test images "
        f"of {data.channels}x{data.image_size}x{data.image_size}, {len(data.classes)} classes; "
        f"{machine.device}{' bf16' if machine.bf16 else ''}; run folder {run_dir}")


def _epoch_line(r, epochs: int) -> str:
    val = f"  val loss {r.val_loss:.4f} acc {r.val_accuracy:.4f}" if r.val_loss is not None else ""
    return (f"epoch {r.epoch}/{epochs}  train loss {r.train_loss:.4f} acc {r.train_accuracy:.4f}{val}"
            f"  lr {r.lr:.2e}  {r.seconds:.1f}s")
