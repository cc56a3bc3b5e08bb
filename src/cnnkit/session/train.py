"""Training a run end to end: `train` makes a run folder, `resume` continues one. Between them: the trainer,
the best weights by validation, the test and the summary."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import WriteFailed, read_json
from cnnkit.core.machine import pick_machine
from cnnkit.core.progress import say
from cnnkit.data import data_name
from cnnkit.data.loader import DeviceBatches
from cnnkit.inspect.plots import Predictions
from cnnkit.inspect.report import add_report
from cnnkit.models import AUTO, CUSTOM, num_parameters
from cnnkit.models.weights import load_weights
from cnnkit.runs.folder import CONFIG, MODEL_INFO, PLAN, RACE, SUMMARY, WEIGHTS, RunFolder
from cnnkit.runs.records import ModelInfo, RunRecord, RunSummary
from cnnkit.runs.run import Run, load
from cnnkit.runs.schema import check_same_run, require_module
from cnnkit.session.context import RunContext, prepare
from cnnkit.session.launch import check_launch, launch_train, share_cores
from cnnkit.session.planning import find_lr, loss_weights, plan_budget, train_batches
from cnnkit.session.race import race
from cnnkit.session.results import EpochReport, TensorBoardLog, closing_line, opening_line, summary_json
from cnnkit.settings.config import TrainConfig
from cnnkit.training.checkpoint import CHECKPOINT, RUN_PARTS, load_checkpoint, require_checkpoint
from cnnkit.training.evaluation import eval_batch, eval_batch_sizes, own_share, predict_logits, test_metrics
from cnnkit.training.events import Callback, EpochResult
from cnnkit.training.lr_find import RangeTest, range_test, unit_rate
from cnnkit.training.pruning import KeepPruned
from cnnkit.training.stopping import TrainingDiverged, TrainingInterrupted, stop_on_signals
from cnnkit.training.trainer import Trainer
from cnnkit.training.warmup import compile_warmup


def train(
    config: TrainConfig | None = None,
    *,
    model: nn.Module | str | None = None,
    callbacks: Sequence[Callback] = (),
    processes: int = 1,
    **settings,
) -> Run:
    """Train a classifier and write its run folder. `model` is a registered name or any nn.Module;
    `callbacks` watch the training loop (see `cnnkit.Callback`); `processes` above 1 trains data-parallel
    with that many processes of this machine, as torchrun would start them.

    Example: `cnnkit.train(data="mnist", model="simplecnn", epochs=1)`.
    """
    started = time.perf_counter()  # a --budget counts from here: loading the data is part of the run
    module, values = _settings(config, model, settings)
    cfg = TrainConfig.from_dict(values)  # checked here, before any process is started
    if processes != 1:
        check_launch(processes)
        run_dir = launch_train(processes, _train_process, config, model, settings, list(callbacks))
        return load(run_dir, model=module, device=cfg.device)
    machine = pick_machine(cfg.device, cfg.precision)
    model_name = type(module).__name__.lower() if module is not None else cfg.model
    # made and claimed first: an unwritable or busy folder fails before any data is loaded
    with RunFolder.create(cfg.out, f"{data_name(cfg.data)}-{model_name}", machine) as folder:
        try:
            ctx, raced = race(prepare(cfg, module, machine, folder), cfg, started)
            folder.write_config(ctx.cfg)
            folder.write_json(MODEL_INFO, ctx.info.to_json())
            if raced:
                folder.write_json(RACE, raced)
        except BaseException:
            folder.abandon()
            raise
        return _run(ctx, callbacks, started=started)


def lr_find(config: TrainConfig | None = None, *, model: nn.Module | str | None = None, **settings) -> RangeTest:
    """The learning-rate range test (see `cnnkit.training.lr_find`) with the data, model and settings `train`
    would take; nothing is kept. Its `suggestion` is the rate `lr="auto"` trains with."""
    module, values = _settings(config, model, settings)
    # the rate is what it finds: set, so that the automatic recipe takes its one-rate optimiser
    cfg = TrainConfig.from_dict({"lr": TrainConfig.lr, **values})
    machine = pick_machine(cfg.device, cfg.precision)
    with tempfile.TemporaryDirectory() as scratch, RunFolder.create(f"{scratch}/probe", "", machine) as folder:
        ctx = prepare(cfg, module, machine, folder)
        ctx.model.to(machine.device, memory_format=machine.memory_format)  # type: ignore[call-overload]
        return range_test(Trainer(ctx.model, ctx.spec, train_batches(ctx), unit_rate(ctx.cfg), machine))


def _settings(
    config: TrainConfig | None, model: nn.Module | str | None, settings: dict
) -> tuple[nn.Module | None, dict]:
    """The module passed in (if any), and every setting given: `config`'s own, then the keywords."""
    module = model if isinstance(model, nn.Module) else None
    if model is not None:
        settings = {**settings, "model": CUSTOM if module is not None else model}
    return module, {**(config.given if config else {}), **settings}


@record  # a failing process writes its error where the launcher reads it, so the caller sees the reason
def _train_process(config: TrainConfig | None, model: nn.Module | str | None, settings: dict, callbacks: list) -> str:
    """One of the processes `train(..., processes=N)` starts."""
    share_cores()
    return str(train(config, model=model, callbacks=callbacks, **settings).dir)


def resume(run_dir: str | Path, model: nn.Module | None = None, callbacks: Sequence[Callback] = ()) -> Run:
    """Continue a stopped run from its newest whole checkpoint; on the CPU the result is bit-identical
    to a run that was never stopped. Pass `model` for runs that trained a custom nn.Module."""
    run_dir = Path(run_dir)
    require_checkpoint(run_dir / CHECKPOINT)  # a folder that cannot be resumed is refused first
    _refuse_finished(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT, RUN_PARTS)  # whole or refused: it is renamed into place
    recorded = ModelInfo.read(run_dir / MODEL_INFO)
    check_same_run(state["model_info"], recorded, f"the checkpoint in {run_dir}")  # this run's, not another's
    edited = TrainConfig.from_yaml(run_dir / CONFIG)
    cfg = _as_recorded(edited, state, run_dir)
    machine = pick_machine(cfg.device, cfg.precision)
    with RunFolder.reopen(run_dir, machine) as folder:  # claimed: no other run is writing it meanwhile
        if cfg != edited:  # config.yaml repeats the run that trained
            folder.write_config(cfg)
        require_module(recorded, model)
        ctx = prepare(cfg, model, machine, folder, fresh=False)
        check_same_run(state["model_info"], ctx.info, f"the checkpoint in {run_dir}")
        position, then = state["position"], state.get("processes", 1)
        say(f"resuming {run_dir} at epoch {position['epoch']}, step {position['step']}")
        if then != machine.world_size:  # the order and augmentation are global: only the shares change
            say(
                f"the checkpoint was written by {_processes(then)} and this run has {_processes(machine.world_size)}: "
                f"it takes up the same global batches of {ctx.cfg.batch_size} images, shared anew"
            )
        return _run(ctx, callbacks, state)


def _refuse_finished(run_dir: Path) -> None:
    """A run with its summary written has trained and tested all it planned: there is nothing to continue."""
    if (run_dir / SUMMARY).is_file():
        raise CnnkitError(
            f"{run_dir} already finished (its {SUMMARY} is written), so there is nothing to resume: "
            f"`cnnkit eval {run_dir}` tests it again, and `cnnkit train --init-from {run_dir}` trains a new run "
            "further from its weights"
        )


def _as_recorded(edited: TrainConfig, state: dict, run_dir: Path) -> TrainConfig:
    """The settings the checkpoint was trained with: a resume continues the run as it was, so edits made to
    config.yaml since are said and ignored (a changed run is a new one, from this one's weights). What the
    run's plan decides as it goes (plan.json: --budget's steps, --lr auto) is config.yaml's, the newest."""
    if "settings" not in state:  # a checkpoint from before checkpoints held their settings
        return edited
    recorded, now = state["settings"], dataclasses.asdict(dataclasses.replace(edited, out=None))
    planned = {k for k, v in (read_json(run_dir / PLAN) if (run_dir / PLAN).is_file() else {}).items() if v is not None}
    ignored = [k for k in now if k in recorded and k not in planned and now[k] != recorded[k]]
    if ignored:
        edits = ", ".join(f"{k}: {now[k]} (the run's: {recorded[k]})" for k in ignored)
        say(
            f"{CONFIG} was edited since this checkpoint was written; a resume continues the run as it was, so "
            f"these edits are ignored (and {CONFIG} put back): {edits}. To train with them, start a new run from "
            f"this one's weights: cnnkit train --init-from {run_dir} ..."
        )
    return TrainConfig.from_dict({**now, **{k: recorded[k] for k in ignored}})


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n > 1 else "")


def _run(
    ctx: RunContext, callbacks: Sequence[Callback], resume_state: dict | None = None, started: float | None = None
) -> Run:
    """A prepared run (or one resumed from `resume_state`) trained, tested and reported."""
    # room for the weights and a checkpoint (with optimiser moments and a weight average), each beside the last
    ctx.folder.ensure_free_space(8 * 4 * num_parameters(ctx.model) + 8 * len(ctx.data.splits["train"]))
    ctx.model.to(ctx.machine.device, memory_format=ctx.machine.memory_format)  # type: ignore[call-overload]
    try:
        summary, predictions = _fit_and_test(ctx, callbacks, resume_state, started or time.perf_counter())
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{e}. Resume with: cnnkit train --resume {ctx.folder}") from None
    except WriteFailed as e:
        if not (ctx.folder / CHECKPOINT).is_file():
            raise
        raise WriteFailed(
            f"{e}. The last checkpoint is whole: once there is space, resume with: cnnkit train --resume {ctx.folder}"
        ) from None
    say(closing_line(summary, ctx.folder))
    run = Run(ctx.folder.path, ctx.model, ctx.info, ctx.settings, ctx.machine)
    if ctx.cfg.report and predictions is not None and ctx.folder.writer:  # the report shows the test
        add_report(run, predictions)
    return run


def _fit_and_test(
    ctx: RunContext, callbacks: Sequence[Callback], resume_state: dict | None, started: float
) -> tuple[RunSummary, Predictions | None]:
    """Prepare, plan, fit, test, summarise: the whole run, top to bottom."""
    # prepare: the model for its steps, the run's bookkeeping, the batches, the trainer
    say(opening_line(ctx))
    if ctx.cfg.sync_bn and ctx.machine.world_size > 1:  # batch statistics over the global batch, not each share
        ctx.model = nn.SyncBatchNorm.convert_sync_batchnorm(ctx.model)
    step_model: nn.Module = torch.compile(ctx.model) if ctx.cfg.compile else ctx.model  # type: ignore[assignment]
    record = RunRecord.from_checkpoint(resume_state["run"]) if resume_state else RunRecord()
    train = train_batches(ctx)
    if ctx.cfg.lr == AUTO:  # the range test's rate, settled before the trainer is made
        find_lr(ctx, train)
    shares = {name: own_share(ctx.data.splits[name], ctx.machine) for name in ("val", "test")}
    val = (
        DeviceBatches(shares["val"], eval_batch(ctx.data.image_size), ctx.preprocess)
        if ctx.data.splits["val"]
        else None
    )
    trainer = Trainer(step_model, ctx.spec, train, ctx.settings, ctx.machine, loss_weights(ctx))
    if resume_state:
        _restore(trainer, resume_state, ctx.folder)
    compile_seconds = 0.0
    if ctx.cfg.compile:  # compiled before the clock starts, and reported on its own
        compile_seconds = compile_warmup(trainer, eval_batch_sizes(shares), ctx.cfg.tta)
        say(f"compiled the model in {compile_seconds:.1f}s")

    # plan: --budget's steps, from a timed warm-up; its callback plans them again as the run goes
    planning = []
    if ctx.cfg.budget is not None and ctx.cfg.steps is None:
        planning = plan_budget(ctx, trainer, record, time.perf_counter() - started)

    # fit: each epoch's line and metrics row, the best weights kept, a checkpoint at each epoch's end
    ctx.folder.start_metrics(keep_before_epoch=trainer.pos.epoch)
    pruning = [KeepPruned(ctx.cfg.prune)] if ctx.cfg.prune else []  # zeros kept before any callback sees a step
    trainer.callbacks = [*pruning, *planning, EpochReport(ctx.folder), KeepBest(ctx.folder, record), *callbacks]
    if ctx.cfg.tensorboard and ctx.folder.writer:
        trainer.callbacks.append(TensorBoardLog(ctx.folder))

    def save(state: dict) -> None:  # the checkpoint describes itself: version, model, classes, preprocessing
        ctx.folder.save_checkpoint(
            {
                **state,
                "run": dataclasses.asdict(record),
                "model_info": ctx.info.to_json(),
                "settings": dataclasses.asdict(dataclasses.replace(ctx.settings, out=None)),  # what config.yaml holds
            }
        )

    with stop_on_signals() as stop:
        trainer.fit(val, save, stop)

    # test the best weights (every process's on disk first)
    ctx.machine.barrier()
    load_weights(ctx.model, ctx.folder / WEIGHTS)
    tested = time.perf_counter()
    untested = ({"classes": ctx.data.classes, "test_accuracy": None}, None)
    metrics, predictions = _test(ctx, step_model) if ctx.cfg.test else untested

    # summarise: summary.json, with what went wrong said in plain words
    summary = summary_json(ctx, metrics, record, compile_seconds, time.perf_counter() - tested)
    for warning in summary.warnings:
        say(f"warning: {warning}")
    summary = dataclasses.replace(summary, seconds_used=round(time.perf_counter() - started, 3))
    ctx.folder.write_json(SUMMARY, summary.to_json())
    return summary, predictions


class KeepBest(Callback):
    """The best weights by validation accuracy (the last epoch's without validation), on disk as soon as they
    exist; `record` travels in every checkpoint."""

    def __init__(self, folder: RunFolder, record: RunRecord):
        self.folder, self.record = folder, record

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.record.train_seconds += result.seconds
        self.record.train_accuracy = result.train_accuracy
        score = result.val_accuracy if result.val_accuracy is not None else result.epoch
        if score >= self.record.best_score:  # a tie goes to the later, longer-trained weights
            self.record.best_score, self.record.best_epoch = score, result.epoch
            self.folder.save_weights(trainer.kept_model)


def _restore(trainer: Trainer, state: dict, folder: RunFolder) -> None:
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise CnnkitError(
            f"the checkpoint in {folder} does not fit this run ({type(e).__name__}: it was "
            "edited or damaged); resume from a whole checkpoint, or start the run again"
        ) from None


def _test(ctx: RunContext, step_model: nn.Module) -> tuple[dict, Predictions]:
    """The test metrics, and the test images with their logits and labels (what the report draws); each
    process predicts its share, and every one gets the whole."""
    images = ctx.data.splits["test"]
    test = DeviceBatches(own_share(images, ctx.machine), eval_batch(ctx.data.image_size), ctx.preprocess)
    logits, labels = (ctx.machine.gather_rows(t) for t in predict_logits(step_model, test, ctx.machine, ctx.cfg.tta))
    metrics = test_metrics(logits, labels, ctx.data.classes)
    if not math.isfinite(metrics["test_loss"]):
        raise TrainingDiverged(
            "the model's outputs on the test images are NaN or infinite, so no summary was written", ctx.machine.bf16
        )
    return metrics, (images, logits, labels)
